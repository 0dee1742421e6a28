"""The setup panel refuses a bad domain or contact e-mail before it connects (issue 14).
No testbed: the server is an address that never answers, and the network is off limits."""

from __future__ import annotations

import socket

import pytest

INJECTED_DOMAIN = '::1%x {\n\trespond "injected" 200\n}\nzzz.localhost'


@pytest.fixture
def panel(home, monkeypatch):
    from labdeploy.widgets.setup import SetupPanel

    monkeypatch.delenv("LABDEPLOY_TESTBED", raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("network used")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return SetupPanel(server_name="lab", host="192.0.2.1", user="alice", key_path=str(home / "id_ed25519"))


@pytest.mark.parametrize("domain,email", [(INJECTED_DOMAIN, ""), ("fe80::1%$(id);", ""), ("10.0.0.2", ""),
                                          ("exp.example.org", "lab@example.org\n}\n:80 {"), ("exp.example.org", "a b@x.org")])
def test_prepare_refuses_a_bad_domain_or_email_before_connecting(panel, domain, email):
    panel.domain_box.value = domain
    panel.email_box.value = email
    panel.prepare_button.click()
    assert panel.last_task is None and panel.remote is None  # nothing ran, nothing connected
    assert panel.steps.state("Prepare server") == "failed"
    assert "What to do" in panel.message.value
