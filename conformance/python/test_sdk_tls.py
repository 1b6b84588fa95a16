"""The official Python Service Bus SDK over TLS, with a normal (not emulator) connection string.

Outside emulator mode the SDK always speaks TLS to port 5671 of the endpoint's host, so the
broker's AMQPS listener binds 127.0.0.1:5671 here; the client is told to trust the test CA.
"""

import shutil
import socket

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage
from azure.servicebus.exceptions import ServiceBusError

from test_tls import pki  # noqa: F401  (fixture: a CA and a server certificate)

SDK_PORT = 5671
CONN = ("Endpoint=sb://localhost/;SharedAccessKeyName=RootManageSharedAccessKey;"
        "SharedAccessKey=SAS_KEY_VALUE")


def _port_free(port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def test_python_sdk_sends_and_receives_over_tls_and_an_untrusting_client_is_refused(ops_broker, pki, tmp_path):  # noqa: F811
    assert _port_free(SDK_PORT), "port 5671 is taken on this machine; the SDK only speaks TLS to 5671"
    c, k = str(tmp_path / "tls.crt"), str(tmp_path / "tls.key")
    shutil.copyfile(pki.srv_a.cert, c)
    shutil.copyfile(pki.srv_a.key, k)
    ops_broker(args=["--amqps-listen", "127.0.0.1:%d" % SDK_PORT, "--tls-cert", c, "--tls-key", k])

    with ServiceBusClient.from_connection_string(CONN, connection_verify=pki.ca_a.cert) as client:
        with client.get_queue_sender("q1") as sender:
            sender.send_messages(ServiceBusMessage("over tls", message_id="tls-1"))
        with client.get_queue_receiver("q1", max_wait_time=5) as receiver:
            got = receiver.receive_messages(max_message_count=1, max_wait_time=5)
            assert [str(m) for m in got] == ["over tls"]
            assert got[0].message_id == "tls-1"
            receiver.complete_message(got[0])

    # a client that trusts only the system's CAs must not get through
    with pytest.raises(ServiceBusError):
        with ServiceBusClient.from_connection_string(CONN, retry_total=0) as client:
            with client.get_queue_sender("q1") as sender:
                sender.send_messages(ServiceBusMessage("must not arrive"))
