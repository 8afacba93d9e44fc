"""Settings: the schema, YAML loading with ``${VAR}`` expansion, durations and error lines."""

from relay.config.schema import (
    AccountSettings,
    AdminSettings,
    DeliverySettings,
    LogSettings,
    RateLimitSettings,
    Settings,
    SubscriberSettings,
    UpstreamSettings,
    load_settings,
)

__all__ = [
    "AccountSettings",
    "AdminSettings",
    "DeliverySettings",
    "LogSettings",
    "RateLimitSettings",
    "Settings",
    "SubscriberSettings",
    "UpstreamSettings",
    "load_settings",
]
