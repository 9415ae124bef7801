"""The privacy rules of one gateway, applied to a parsed request in one place before records are built.

`PrivacyPolicy.from_settings` returns None when nothing is configured, so the capture handler pays
one `is None` check per request. Every action is counted in `gateway_privacy_actions_total{rule}`:
ip_truncate / ip_drop / dnt_drop / dnt_anonymise / geoip_disable count events, denylist counts
removed properties, mask_email / mask_card / mask_pattern count replaced values.

Replay (`/s`): only the IP rule and DNT/GPC apply. Snapshot data is never masked or filtered
(rewriting rrweb payloads would corrupt them; mask in the SDK with posthog-js's session recording
masking options), and the replay record carries only ids and `$lib`, not event properties.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.capture.events import RequestContext
from gateway.capture.parse import ParsedRequest
from gateway.metrics import serve as metrics
from gateway.privacy.consent import ConsentMode, anonymise_event, opted_out
from gateway.privacy.denylist import PropertyDenylist
from gateway.privacy.ip import IpMode, minimise_ip, token_ip_modes
from gateway.privacy.masking import ValueMasker
from gateway.settings import ServeSettings

RULES = (
    "ip_truncate", "ip_drop", "denylist", "mask_email", "mask_card", "mask_pattern",
    "dnt_drop", "dnt_anonymise", "geoip_disable",
)


class PrivacyPolicy:
    """IP, denylist, masking, DNT/GPC and GeoIP rules of one gateway, with their counters."""

    def __init__(
        self,
        ip_mode: IpMode = IpMode.KEEP,
        token_ip: Mapping[str, IpMode] | None = None,
        denylist: PropertyDenylist | None = None,
        masker: ValueMasker | None = None,
        consent: ConsentMode = ConsentMode.IGNORE,
        geoip_disable: bool = False,
    ) -> None:
        self.ip_mode = ip_mode
        self.token_ip = dict(token_ip or {})
        self.denylist = denylist or None
        self.masker = masker or None
        self.consent = consent
        self.geoip_disable = geoip_disable
        self._counters = {rule: metrics.PRIVACY_ACTIONS.labels(rule) for rule in RULES}
        self._dropped = metrics.EVENTS_DROPPED.labels("do_not_track")

    @classmethod
    def from_settings(cls, settings: ServeSettings) -> PrivacyPolicy | None:
        """The policy the settings ask for, or None when they ask for nothing (raises ValueError)."""
        policy = cls(
            ip_mode=IpMode(settings.ip_mode),
            token_ip=token_ip_modes(settings.ip_mode_token),
            denylist=PropertyDenylist(settings.property_denylist),
            masker=ValueMasker(settings.mask_emails, settings.mask_cards, settings.mask_pattern),
            consent=ConsentMode(settings.dnt),
            geoip_disable=settings.inject_geoip_disable,
        )
        return policy if policy.active else None

    @property
    def active(self) -> bool:
        return bool(
            self.ip_mode is not IpMode.KEEP
            or any(mode is not IpMode.KEEP for mode in self.token_ip.values())
            or self.denylist
            or self.masker
            or self.consent is not ConsentMode.IGNORE
            or self.geoip_disable
        )

    def opted_out(self, headers: Mapping[str, str]) -> bool:
        """Whether the request's DNT/GPC signal matters under this policy."""
        return self.consent is not ConsentMode.IGNORE and opted_out(headers)

    def apply(
        self, parsed: ParsedRequest, context: RequestContext, replay: bool, opted_out: bool
    ) -> tuple[ParsedRequest | None, RequestContext]:
        """Minimise the request in place; None when DNT/GPC says drop (answered 200, counted)."""
        events = parsed.events
        count = len(events)
        ip_mode = self.token_ip.get(parsed.token, self.ip_mode)
        if opted_out:
            if self.consent is ConsentMode.DROP:
                self._counters["dnt_drop"].inc(count)
                self._dropped.inc(count)
                return None, context
            self._counters["dnt_anonymise"].inc(count)
            ip_mode = IpMode.DROP
            if not replay:
                for event in events:
                    anonymise_event(event)
        if ip_mode is not IpMode.KEEP:
            context = RequestContext(minimise_ip(context.client_ip, ip_mode), context.now, context.user_agent)
            self._counters[f"ip_{ip_mode.value}"].inc(count)
            if not replay:
                for event in events:
                    _minimise_ip_property(event["properties"], ip_mode)
        if replay:
            return parsed, context
        if self.denylist is not None:
            removed = sum(self.denylist.apply(event) for event in events)
            if removed:
                self._counters["denylist"].inc(removed)
        if self.masker is not None:
            for rule, hits in self.masker.apply(events).items():
                self._counters[f"mask_{rule}"].inc(hits)
        if self.geoip_disable:
            for event in events:
                event["properties"]["$geoip_disable"] = True
            self._counters["geoip_disable"].inc(count)
        return parsed, context


def _minimise_ip_property(properties: dict[str, Any], mode: IpMode) -> None:
    """Apply the IP rule to an SDK-sent `$ip` too (server-side SDKs forward their users' IPs)."""
    ip = properties.get("$ip")
    if ip is None:
        return
    if mode is IpMode.DROP or not isinstance(ip, str):
        del properties["$ip"]
    else:
        properties["$ip"] = minimise_ip(ip, mode)
