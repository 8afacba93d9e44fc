"""What a configuration reload changes: a pure comparison of the running settings with the new
ones. :class:`~relay.runtime.supervisor.Supervisor` carries the plan out.

Subscribers are stopped and started by name: a removed one's deliveries stay in the store (and
are reported), a re-added one resumes them; a changed one is stopped (its in-flight deliveries
finish) and started with its new settings. A poller is restarted when its account, the upstream
settings or the subscribers its records go to (their set, or their filters) change; it takes up
its durable cursor, so nothing is skipped or delivered twice (de-dup is in the store).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.config.schema import AccountSettings, Settings, SubscriberSettings

# Sections a running relay cannot change; a reload applies the rest and names these.
RESTART_ONLY = ("state", "admin", "log")


@dataclass(slots=True)
class ReloadPlan:
    """What to stop and start, and what to tell the operator."""

    stop_subscribers: list[str] = field(default_factory=list)
    start_subscribers: list[SubscriberSettings] = field(default_factory=list)
    stop_accounts: list[str] = field(default_factory=list)
    start_accounts: list[AccountSettings] = field(default_factory=list)
    new_client: bool = False
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)


def plan_reload(old: Settings, new: Settings) -> ReloadPlan:
    """Compare ``old`` and ``new`` settings (pure)."""
    plan = ReloadPlan()
    before = {s.name: s for s in old.subscribers if s.enabled}
    after = {s.name: s for s in new.subscribers if s.enabled}
    delivery_changed = old.delivery != new.delivery
    for name in before.keys() - after.keys():
        plan.stop_subscribers.append(name)
        plan.removed.append(f"subscriber {name}")
    for name, sub in after.items():
        if name not in before:
            plan.start_subscribers.append(sub)
            plan.added.append(f"subscriber {name}")
        elif before[name] != sub or delivery_changed:
            plan.stop_subscribers.append(name)
            plan.start_subscribers.append(sub)
            plan.changed.append(f"subscriber {name}")

    up_old = old.upstream.model_copy(update={"accounts": []})
    up_new = new.upstream.model_copy(update={"accounts": []})
    upstream_changed = up_old != up_new
    plan.new_client = any(
        getattr(old.upstream, key) != getattr(new.upstream, key)
        for key in ("base_url", "timeout", "max_response_bytes")
    )
    accounts_before = {a.name: a for a in old.upstream.accounts}
    accounts_after = {a.name: a for a in new.upstream.accounts}
    for name in accounts_before.keys() - accounts_after.keys():
        plan.stop_accounts.append(name)
        plan.removed.append(f"account {name}")
    for name, account in accounts_after.items():
        if name not in accounts_before:
            plan.start_accounts.append(account)
            plan.added.append(f"account {name}")
            continue
        # The poller routes records (subscriber filters are compiled into it), so any change
        # to a subscriber of this account restarts it: a changed filter applies to new records.
        fan_out = old.subscribers_for(name) != new.subscribers_for(name)
        if accounts_before[name] != account or upstream_changed or fan_out:
            plan.stop_accounts.append(name)
            plan.start_accounts.append(account)
            if accounts_before[name] != account or upstream_changed:
                plan.changed.append(f"account {name}")
    plan.restart_required = [key for key in RESTART_ONLY if getattr(old, key) != getattr(new, key)]
    for items in (plan.stop_subscribers, plan.stop_accounts, plan.added, plan.removed):
        items.sort()
    return plan
