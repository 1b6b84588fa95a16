"""Fixtures that start real ferrobus brokers (brokers.Broker) for a test.

Usage in a test:

    def test_x(broker):                      # default config
        broker.amqp_url                      # "amqp://127.0.0.1:PORT"

    @pytest.mark.broker(amqp={"idle_timeout_ms": 2000}, queues=["a", "b"])
    def test_y(broker): ...

    def test_z(start_broker):                # factory, several brokers or per-call config
        b = start_broker(amqp={"require_sasl": True})

    def test_ops(ops_broker):                # factory; RUST_LOG / FERROBUS__* not inherited
        b = ops_broker(extra_toml="[log]\\nlevel = \\"warn\\"\\n", args=[...], env={...})

`amqp` entries override the [amqp] table, `queues` replaces the queue list (default q1, q2; an
entry may be a dict with queue settings), `auth_keys` replaces the [[auth.keys]] list; any other
brokers.Broker option (storage, extra_toml, config_file, args, env, clean_env) may be given too.

At teardown every broker a test did not stop, kill or see exit itself gets SIGTERM and must exit 0,
and no run of any broker may have panicked. When a test fails, the stderr and stdout of its brokers
are attached to the report.
"""

import functools

import pytest

from brokers import Broker
from peer_checks import Healthy


@pytest.fixture
def start_broker(request, tmp_path):
    """Factory: start_broker(amqp=None, queues=None, auth_keys=None, **options) -> a started Broker
    in a work dir of its own under tmp_path."""
    brokers = []
    request.node._ferrobus_brokers = brokers

    def start(amqp=None, queues=None, auth_keys=None, **options):
        b = Broker(tmp_path / ("broker%d" % len(brokers)), amqp, queues, auth_keys, **options)
        brokers.append(b)
        return b.start()

    yield start

    problems = [p for b in brokers for p in b.teardown_problems()]
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def broker(request, start_broker):
    """A started Broker configured by the test's `broker` marker (default config without one)."""
    marker = request.node.get_closest_marker("broker")
    kwargs = dict(marker.kwargs) if marker else {}
    return start_broker(**kwargs)


@pytest.fixture
def ops_broker(start_broker):
    """Factory for the operations tests: start_broker with clean_env=True, so the log level and
    config come only from what the test gives (extra_toml, config_file, args, env)."""
    return functools.partial(start_broker, clean_env=True)


@pytest.fixture
def healthy(broker):
    """A proton client connected before a test's bad peer; `healthy.check()` uses it after."""
    h = Healthy(broker)
    yield h
    h.close()


def pytest_configure(config):
    config.addinivalue_line("markers", "broker(amqp=None, queues=None, auth_keys=None, **options): "
                                       "broker config for the test")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for i, b in enumerate(getattr(item, "_ferrobus_brokers", [])):
            rep.sections.append(("ferrobus[%d] stderr (%s)" % (i, call.when), b.stderr_tail()))
            if b.stdout_lines:
                rep.sections.append(("ferrobus[%d] stdout" % i, "\n".join(b.stdout_lines)))
