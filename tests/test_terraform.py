"""terraform/ read with python-hcl2: the cross-references between the deployment and the code."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest

from shepherd_tools.package import JOBS_NAME

ROOT = Path(__file__).resolve().parents[1]
TERRAFORM = ROOT / "terraform"


def unquote(value: Any) -> Any:
    return value[1:-1] if isinstance(value, str) and value[:1] == value[-1:] == '"' else value


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(key)
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


@pytest.fixture(scope="module")
def tf() -> dict[str, Any]:
    merged: dict[str, Any] = {"resource": {}, "locals": {}, "variable": {}, "output": {}}
    for path in sorted(TERRAFORM.glob("*.tf")):
        with path.open() as f:
            doc = hcl2.load(f)
        for block in doc.get("resource", []):
            for kind, named in block.items():
                for name, body in named.items():
                    merged["resource"].setdefault(unquote(kind), {})[unquote(name)] = body
        for block in doc.get("locals", []):
            merged["locals"].update({k: v for k, v in block.items() if k != "__comments__"})
        for key in ("variable", "output"):
            for block in doc.get(key, []):
                merged[key].update({unquote(k): v for k, v in block.items()})
    return merged


def functions(tf: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        unquote(k): {f: unquote(v) for f, v in body.items()}
        for k, body in tf["locals"]["functions"].items()
    }


def env_the_code_reads() -> set[str]:
    pattern = re.compile(
        r"""(?:environ\.get|environ\.setdefault|_env|getenv)\(\s*"([A-Z_]+)"|environ\["([A-Z_]+)"\]"""
    )
    names: set[str] = set()
    for path in (ROOT / "shared" / "shepherd").rglob("*.py"):
        for match in pattern.finditer(path.read_text()):
            names.add(match[1] or match[2])
    return names


def test_every_entry_point_is_a_target_in_functions_main(tf: dict[str, Any]) -> None:
    tree = ast.parse((ROOT / "functions" / "main.py").read_text())
    targets = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    entry_points = {f["entry_point"] for f in functions(tf).values()}
    assert entry_points == {"trigger", "on_build_notification", "on_timer", "api", "scheduler"}
    assert entry_points <= targets
    (fn,) = [tf["resource"]["google_cloudfunctions2_function"]["fn"]]
    assert fn["build_config"][0]["entry_point"] == "${each.value.entry_point}"
    assert unquote(fn["build_config"][0]["runtime"]) == "python311"


def test_environment_names_are_the_ones_the_code_reads(tf: dict[str, Any]) -> None:
    env = tf["locals"]["common_env"]
    read = env_the_code_reads()
    assert set(env) <= read, set(env) - read
    required = {
        "GOOGLE_CLOUD_PROJECT",
        "SHEPHERD_JOBS",
        "SHEPHERD_TASKS_QUEUE",
        "SHEPHERD_TOPIC",
        "SHEPHERD_TIMER_URL",
    }
    assert required <= set(env)
    assert unquote(env["SHEPHERD_JOBS"]) == JOBS_NAME  # the name `shepherd package` writes
    assert unquote(env["SHEPHERD_LOG_FORMAT"]) == "json"  # said, not left to K_SERVICE
    secret = tf["resource"]["google_cloudfunctions2_function"]["fn"]["service_config"][0]
    secret_env = secret["dynamic"][0]['"secret_environment_variables"']["content"][0]["key"]
    assert unquote(secret_env) == "SHEPHERD_SECRET" and "SHEPHERD_SECRET" in read


def test_queue_topic_and_timer_url_point_at_what_terraform_creates(tf: dict[str, Any]) -> None:
    env, resources = tf["locals"]["common_env"], tf["resource"]
    assert env["SHEPHERD_TASKS_QUEUE"] == "${google_cloud_tasks_queue.status_checks.id}"
    assert env["SHEPHERD_TOPIC"] == "${google_pubsub_topic.notifications.id}"
    assert resources["google_cloud_tasks_queue"]["status_checks"]["name"] == "${local.queue_id}"
    assert resources["google_pubsub_topic"]["notifications"]["name"] == "${local.topic_id}"
    # on-timer's deterministic URL names the function terraform creates under that key.
    assert unquote(tf["locals"]["timer_url"]).endswith("/on-timer") and "on-timer" in functions(tf)
    push = resources["google_pubsub_subscription"]["notifications_push"]["push_config"][0]
    assert 'fn["on-build-notification"]' in push["push_endpoint"]
    assert "google_service_account.push_invoker" in push["oidc_token"][0]["service_account_email"]


def test_no_binding_opens_anything_to_everyone(tf: dict[str, Any]) -> None:
    everything = list(strings(tf["resource"]))
    assert not [s for s in everything if "allUsers" in s or "allAuthenticatedUsers" in s]
    for name in ("trigger_invokers", "api_invokers"):
        assert "validation" in tf["variable"][name]


def test_every_service_account_is_used_and_each_function_has_its_own(tf: dict[str, Any]) -> None:
    accounts = tf["resource"]["google_service_account"]
    text = "\n".join(path.read_text() for path in TERRAFORM.glob("*.tf"))
    for name in accounts:
        uses = len(re.findall(rf"google_service_account\.{name}\b", text))
        assert uses >= 2, f"service account {name} is created but never used"
    per_function = {f["account"] for f in functions(tf).values()}
    assert len(per_function) == 5
    assert accounts["fn"]["for_each"].count('"') // 2 == 5
    assert all(f'"{account}"' in accounts["fn"]["for_each"] for account in per_function)


def test_on_timer_is_invoked_only_by_the_tasks_identity(tf: dict[str, Any]) -> None:
    invokers = tf["resource"]["google_cloud_run_service_iam_member"]
    timer = [b for b in invokers.values() if 'fn["on-timer"]' in b["service"]]
    assert len(timer) == 1
    assert "google_service_account.tasks_invoker" in timer[0]["member"]


def test_exactly_the_functions_that_call_buildbucket_act_as_its_account(
    tf: dict[str, Any],
) -> None:
    callers = {name for name, f in functions(tf).items() if f["buildbucket"] is True}
    # on-timer launches and checks builds, on-build-notification runs GetBuild (the "luci"
    # status policy), api aborts (CancelBuild); trigger and scheduler only enqueue a start.
    assert callers == {"on-timer", "on-build-notification", "api"}
    env = tf["resource"]["google_cloudfunctions2_function"]["fn"]["service_config"][0]
    assert env["environment_variables"] == (
        "${merge(local.common_env, each.value.buildbucket ? local.buildbucket_env : {})}"
    )
    (name,) = tf["locals"]["buildbucket_env"]
    assert name == "SHEPHERD_BUILDBUCKET_ACCOUNT" and name in env_the_code_reads()
    assert tf["locals"]["buildbucket_env"][name] == "${google_service_account.buildbucket.email}"
    grants = tf["resource"]["google_service_account_iam_member"]["buildbucket_token_creators"]
    assert grants["service_account_id"] == "${google_service_account.buildbucket.name}"
    assert unquote(grants["role"]) == "roles/iam.serviceAccountTokenCreator"
    assert "if f.buildbucket" in grants["for_each"]
    assert "google_service_account.fn[each.key]" in grants["member"]
    # No other binding lets anyone mint or act as that account.
    text = "\n".join(path.read_text() for path in TERRAFORM.glob("*.tf"))
    assert text.count("google_service_account.buildbucket.name") == 1
    assert tf["output"]["buildbucket_account"]["value"] == (
        "${google_service_account.buildbucket.email}"
    )


def test_status_checks_are_retried_as_queue_policy_says(tf: dict[str, Any]) -> None:
    from shepherd import queue_policy
    from shepherd.adapters.cloud_tasks import retry_config
    from shepherd.durations import parse_duration

    (retry,) = tf["resource"]["google_cloud_tasks_queue"]["status_checks"]["retry_config"]
    assert retry["max_attempts"] == "${var.status_checks_max_attempts}"
    assert tf["variable"]["status_checks_max_attempts"]["default"] == queue_policy.MAX_ATTEMPTS
    assert parse_duration(unquote(retry["min_backoff"])) == queue_policy.MIN_BACKOFF_NS
    assert parse_duration(unquote(retry["max_backoff"])) == queue_policy.MAX_BACKOFF_NS
    assert retry["max_doublings"] == queue_policy.MAX_DOUBLINGS
    # The doublings reach the cap, and the cap is the default status_check_max.
    assert queue_policy.backoff_ns(queue_policy.MAX_DOUBLINGS) == queue_policy.MAX_BACKOFF_NS
    assert queue_policy.backoff_ns(10**6) == parse_duration("10m")
    # The queue the adapter creates on the emulator says the same.
    emulated = retry_config()
    assert emulated.max_attempts == -1 and emulated.max_doublings == retry["max_doublings"]
    assert emulated.max_backoff.total_seconds() * 1e9 == queue_policy.MAX_BACKOFF_NS


def test_the_embedded_queue_never_gives_up_a_timer() -> None:
    from shepherd import queue_policy
    from shepherd.adapters.sqlite_delivery import TIMER, Delivery, backoff_ns

    waits = [backoff_ns(Delivery("t", TIMER, {}, n)) for n in range(0, 10_000, 7)]
    assert waits[0] == queue_policy.MIN_BACKOFF_NS
    assert max(waits) == waits[-1] == queue_policy.MAX_BACKOFF_NS
