"""Data minimisation at the edge: IP handling, property denylist, value masking, DNT/GPC, GeoIP opt-out.

Applied once per request between parsing and record building (`PrivacyPolicy.apply`), so nothing
the rules remove ever reaches the spool, Kafka or ClickHouse.
"""
