"""The reload planner: which units a configuration change stops and starts (pure)."""

from __future__ import annotations

from typing import Any

from relay.config.schema import Settings
from relay.runtime.reload import plan_reload
from tests.helpers import KEY_A, KEY_B, new_secret

SECRET = new_secret()


def settings(subs: list[dict[str, Any]], **upstream: Any) -> Settings:
    accounts = upstream.pop("accounts", [{"name": "alpha", "api_key": KEY_A}])
    return Settings.model_validate(
        {
            "upstream": {"base_url": "http://127.0.0.1:1", "accounts": accounts, **upstream},
            "subscribers": [{"url": "http://127.0.0.1:2/", "secret": SECRET, **s} for s in subs],
        }
    )


def test_nothing_changed_plans_nothing() -> None:
    a = settings([{"name": "crm"}])
    plan = plan_reload(a, settings([{"name": "crm"}]))
    assert (plan.added, plan.removed, plan.changed, plan.restart_required) == ([], [], [], [])
    assert plan.stop_subscribers == plan.stop_accounts == [] and not plan.new_client


def test_subscribers_added_removed_changed_and_disabled() -> None:
    old = settings([{"name": "crm"}, {"name": "gone"}, {"name": "same"}, {"name": "off"}])
    new = settings(
        [{"name": "crm", "timeout": "3s"}, {"name": "same"}, {"name": "new"},
         {"name": "off", "enabled": False}]
    )  # fmt: skip
    plan = plan_reload(old, new)
    assert plan.added == ["subscriber new"]
    assert plan.removed == ["subscriber gone", "subscriber off"]
    assert plan.changed == ["subscriber crm"]
    assert plan.stop_subscribers == ["crm", "gone", "off"]
    assert sorted(s.name for s in plan.start_subscribers) == ["crm", "new"]
    # alpha's records now go to a different set of subscribers: its poller restarts quietly.
    assert plan.stop_accounts == ["alpha"] and [a.name for a in plan.start_accounts] == ["alpha"]


def test_accounts_and_upstream_settings() -> None:
    two = [{"name": "alpha", "api_key": KEY_A}, {"name": "bravo", "api_key": KEY_B}]
    old = settings([{"name": "crm"}])
    plan = plan_reload(old, settings([{"name": "crm"}], accounts=two))
    assert plan.added == ["account bravo"] and plan.stop_accounts == []
    plan = plan_reload(old, settings([{"name": "crm"}], poll_interval="9s"))
    assert plan.changed == ["account alpha"] and not plan.new_client
    plan = plan_reload(old, settings([{"name": "crm"}], timeout="9s"))
    assert plan.new_client and plan.stop_accounts == ["alpha"]


def test_sections_that_need_a_restart_are_named() -> None:
    old = settings([])
    new = old.model_copy(
        update={"state": "other.db", "log": old.log.model_copy(update={"level": "DEBUG"})}
    )
    assert plan_reload(old, new).restart_required == ["state", "log"]
