"""The one configuration object: every variable, the defaults, and one-line refusals."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from localstack import write_jobs
from shepherd.auth import GOOGLE_CERTS_URL, OidcAuth, SharedTokenAuth
from shepherd.config import DEFAULT_STATE, DEFAULT_TIMER_URL, Config, ConfigError
from shepherd.durations import HOUR, MILLISECOND, SECOND
from shepherd.engine import SWEEP_MARGIN_NS
from shepherd.service import build_service

SECRET = "0123456789abcdef-config"
QUEUE = "projects/p/locations/us-central1/queues/status-checks"
TOPIC = "projects/p/topics/buildbucket-notifications"

EVERYTHING = {
    "SHEPHERD_JOBS": "/etc/shepherd/jobs.toml",
    "SHEPHERD_STATE": "/var/lib/shepherd/state.db",
    "SHEPHERD_SECRET": SECRET,
    "GOOGLE_CLOUD_PROJECT": "p",
    "SHEPHERD_TASKS_QUEUE": QUEUE,
    "SHEPHERD_TIMER_URL": "https://on-timer-xyz.a.run.app",
    "SHEPHERD_TASKS_SERVICE_ACCOUNT": "tasks@p.iam.gserviceaccount.com",
    "SHEPHERD_TOPIC": TOPIC,
    "SHEPHERD_BUILDBUCKET_ACCOUNT": "buildbucket@p.iam.gserviceaccount.com",
    "SHEPHERD_LOG_RETENTION": "2160h",
    "SHEPHERD_OIDC_CERTS_URL": "http://127.0.0.1:9/certs",
    "CLOUD_TASKS_EMULATOR_HOST": "127.0.0.1:8123",
    "PUBSUB_EMULATOR_HOST": "127.0.0.1:8085",
    "SHEPHERD_STORE_TIMEOUT": "1500ms",
    "SHEPHERD_FUNCTIONS_SOURCE": "/src/functions/main.py",
    "SHEPHERD_GITILES_AUTH": "anonymous",
    "SHEPHERD_SWEEP_MARGIN": "90s",
}


def test_every_variable_is_read() -> None:
    config = Config.from_env(EVERYTHING)
    assert config == Config(
        jobs="/etc/shepherd/jobs.toml",
        state=Path("/var/lib/shepherd/state.db"),
        secret=SECRET.encode(),
        project="p",
        tasks_queue=QUEUE,
        timer_url="https://on-timer-xyz.a.run.app",
        tasks_service_account="tasks@p.iam.gserviceaccount.com",
        topic=TOPIC,
        buildbucket_account="buildbucket@p.iam.gserviceaccount.com",
        log_retention_ns=2160 * HOUR,
        oidc_certs_url="http://127.0.0.1:9/certs",
        tasks_emulator_host="127.0.0.1:8123",
        pubsub_emulator=True,
        store_timeout_ns=1500 * MILLISECOND,
        functions_source=Path("/src/functions/main.py"),
        sweep_margin_ns=90 * SECOND,
        gitiles_auth="anonymous",
    )
    assert config.on_timer_url == "https://on-timer-xyz.a.run.app"


def test_defaults_and_empty_values_count_as_unset() -> None:
    blank = {name: "" for name in EVERYTHING}
    for config in (Config.from_env({}), Config.from_env(blank)):
        assert config == Config()
        assert config.state == Path(DEFAULT_STATE)
        assert config.project is None and config.secret is None
        assert config.oidc_certs_url == GOOGLE_CERTS_URL
        assert config.on_timer_url == DEFAULT_TIMER_URL
        assert not config.pubsub_emulator
        assert config.store_timeout_ns is None and config.log_retention_ns is None


def test_the_secret_never_shows_in_its_repr() -> None:
    assert SECRET not in repr(Config.from_env(EVERYTHING))


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SHEPHERD_SECRET", "too-short", "SHEPHERD_SECRET must have at least 16 bytes"),
        ("SHEPHERD_LOG_RETENTION", "90d", 'Go duration such as "90s" or "2160h", not "90d"'),
        ("SHEPHERD_LOG_RETENTION", "-1h", 'SHEPHERD_LOG_RETENTION must be positive, not "-1h"'),
        ("SHEPHERD_STORE_TIMEOUT", "0s", 'SHEPHERD_STORE_TIMEOUT must be positive, not "0s"'),
        ("SHEPHERD_STORE_TIMEOUT", "soon", "SHEPHERD_STORE_TIMEOUT must be a Go duration"),
        ("SHEPHERD_SWEEP_MARGIN", "-1m", 'SHEPHERD_SWEEP_MARGIN must be positive, not "-1m"'),
        ("SHEPHERD_TIMER_URL", "on-timer", "SHEPHERD_TIMER_URL must be an http(s) URL"),
        ("SHEPHERD_OIDC_CERTS_URL", "ftp://x/certs", "SHEPHERD_OIDC_CERTS_URL must be an http"),
        ("SHEPHERD_TASKS_QUEUE", "status-checks", '"projects/P/locations/L/queues/Q"'),
        ("SHEPHERD_TOPIC", "projects/p/subscriptions/s", 'must be "projects/P/topics/T"'),
        ("SHEPHERD_BUILDBUCKET_ACCOUNT", "buildbucket", "must be a service account email"),
        ("SHEPHERD_GITILES_AUTH", "oauth", 'must be "token" or "anonymous", not "oauth"'),
    ],
)
def test_bad_values_are_refused_in_one_line(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Config.from_env({**EVERYTHING, name: value})
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_the_service_refuses_what_its_adapters_would_miss(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^SHEPHERD_JOBS is not set$"):
        build_service(Config())
    jobs = str(write_jobs(tmp_path / "jobs.toml", "cr-buildbucket.appspot.com"))
    on_gcp = Config(jobs=jobs, project="p", tasks_queue=QUEUE, topic=TOPIC)
    for missing, name in (("tasks_queue", "SHEPHERD_TASKS_QUEUE"), ("topic", "SHEPHERD_TOPIC")):
        with pytest.raises(ConfigError, match=rf"^{name} is not set$"):
            build_service(dataclasses.replace(on_gcp, **{missing: None}))
    with pytest.raises(ConfigError, match="on_timer needs SHEPHERD_TASKS_SERVICE_ACCOUNT"):
        build_service(on_gcp)


def test_the_service_is_built_from_the_config_alone(tmp_path: Path) -> None:
    jobs = str(write_jobs(tmp_path / "jobs.toml", "cr-buildbucket.appspot.com"))
    state = tmp_path / "elsewhere" / "state.db"
    service = build_service(Config(jobs=jobs, state=state, secret=SECRET.encode()))
    assert state.exists() and service.embedded is not None
    assert isinstance(service.timer_auth, SharedTokenAuth)
    assert service.engine.jobs.job("chromium/Windows deterministic") is not None
    assert service.engine.sweep_margin_ns == SWEEP_MARGIN_NS
    margin = dataclasses.replace(Config(jobs=jobs, state=state), sweep_margin_ns=5 * SECOND)
    assert build_service(margin).engine.sweep_margin_ns == 5 * SECOND
    # Without a secret, the embedded defaults generate a key beside the state.
    build_service(Config(jobs=jobs, state=state))
    assert (state.parent / "secret.key").stat().st_mode & 0o777 == 0o600


def test_gitiles_is_read_with_a_token_where_a_cloud_project_is_set(tmp_path: Path) -> None:
    from shepherd.service import _gitiles_clients

    assert Config.from_env({}).gitiles_auth == "anonymous"
    assert Config.from_env({"GOOGLE_CLOUD_PROJECT": "p"}).gitiles_auth == "token"
    for auth, https_authenticated in (("token", True), ("anonymous", False)):
        clients = _gitiles_clients(Config(gitiles_auth=auth))
        https, local = clients("https://x.googlesource.com"), clients("http://127.0.0.1:9")
        assert (https.authenticated, local.authenticated) == (https_authenticated, False)
        assert clients("https://x.googlesource.com") is https  # kept for the next polls
        https.close()
        local.close()


def test_cloud_tasks_identity_checks_tokens_for_the_configured_url() -> None:
    from shepherd.service import _timer_auth

    config = Config.from_env({**EVERYTHING, "CLOUD_TASKS_EMULATOR_HOST": ""})
    auth, headers = _timer_auth(config, None)
    assert auth == OidcAuth(
        "https://on-timer-xyz.a.run.app",
        "tasks@p.iam.gserviceaccount.com",
        "http://127.0.0.1:9/certs",
    )
    assert headers == {}


def test_shepherd_dev_refuses_a_bad_variable_in_one_line(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.toml", "cr-buildbucket.appspot.com")
    done = subprocess.run(
        [sys.executable, "-m", "shepherd_tools.cli", "dev", "--jobs", str(jobs), "--port", "0"],
        env={"PATH": "/usr/bin:/bin", "SHEPHERD_STORE_TIMEOUT": "forever"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        'shepherd: SHEPHERD_STORE_TIMEOUT must be a Go duration such as "90s" or "2160h",'
        ' not "forever"'
    )
