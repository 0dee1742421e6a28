"""The Swarm stack translation (pure) and the engine choice, refused before anything connects."""

from __future__ import annotations

import pytest

from labdeploy.app import deploy, swarm, swarmstack
from labdeploy.app.options import DeployOptions
from labdeploy.errors import ValidationError

EXAMPLE_COMMANDS = {"web": "gunicorn app:app", "worker": "python -m worker", "clock": "python -m clock"}


def doc(**kw):
    return swarmstack.stack_document("swm-u", "10.250.0.1:5000/lab/swm-u:abc@sha256:" + "0" * 64, version="abc",
                                     commands=EXAMPLE_COMMANDS, processes=("web", "worker"), **kw)


def test_replicas_dnsrr_and_no_single_server_keys():
    d = doc(web=2, workers=3)
    services = d["services"]
    assert set(services) == {"web", "worker", "postgresql", "redis"}
    assert services["web"]["deploy"]["replicas"] == 2 and services["worker"]["deploy"]["replicas"] == 3
    for name, service in services.items():
        assert service["deploy"]["endpoint_mode"] == "dnsrr", name
        assert not {"build", "container_name", "restart", "depends_on"} & set(service), name


def test_data_services_pinned_to_the_labelled_node_with_their_volumes():
    services = doc()["services"]
    for name in ("postgresql", "redis"):
        assert services[name]["deploy"]["placement"]["constraints"] == ["node.labels.labdeploy.data == true"]
        assert services[name]["volumes"]
    assert "placement" not in services["web"]["deploy"]


def test_web_updates_start_first_and_roll_back_on_a_failed_health_check():
    web = doc()["services"]["web"]
    assert web["healthcheck"]["test"][0] == "CMD-SHELL"
    assert web["deploy"]["update_config"]["failure_action"] == "rollback"
    assert web["deploy"]["update_config"]["order"] == "start-first"
    assert web["deploy"]["rollback_config"]["order"] == "start-first"
    assert web["networks"] == ["default", "ingress"]


def test_no_secret_in_the_document():
    d = doc()
    text = repr(d)
    assert "DATABASE_URL" not in text and "POSTGRES_PASSWORD" not in text
    assert d["services"]["web"]["env_file"] == ["secrets.env"]
    assert d["services"]["postgresql"]["env_file"] == ["postgres.env"]


def test_per_replica_limits():
    web = doc(cpus=0.5, memory="512m")["services"]["web"]
    assert web["deploy"]["resources"]["limits"] == {"cpus": "0.5", "memory": str(512 * 1024 ** 2)}


def test_ingress_caddy_publishes_in_host_mode_on_the_manager_node():
    d = swarmstack.ingress_document("caddy:2", "/home/lab/dallinger-swarm/ingress", "abc123")
    caddy = d["services"]["caddy"]
    assert all(p["mode"] == "host" for p in caddy["ports"])
    assert caddy["deploy"]["placement"]["constraints"] == ["node.id == abc123"]
    assert d["networks"]["ingress"]["name"] == swarmstack.INGRESS_NETWORK
    with pytest.raises(ValidationError):
        swarmstack.ingress_document("caddy:2", "/x", "abc; rm -rf /")


def test_site_reaches_every_web_replica():
    text = swarmstack.site("swm-u", "swm-u.localhost")
    assert text.startswith("http://swm-u.localhost {") and "dynamic a swm-u_web 5000" in text


@pytest.mark.parametrize("value", ["Swarm", "kubernetes", "", None, 3])
def test_a_bad_engine_is_refused_before_anything_connects(value, no_network):
    with pytest.raises(ValidationError) as info:
        deploy.deploy(swarmstack.__file__, "swm-bad", "nowhere.invalid", engine=value, mode="registry")
    assert info.value.code == "invalid.engine"


def test_swarm_needs_the_registry_mode(no_network):
    with pytest.raises(ValidationError) as info:
        DeployOptions(engine="swarm").check()
    assert info.value.code == "invalid.engine.mode"


@pytest.mark.parametrize("value", ["0", "x", "99"])
def test_num_dynos_web_checked(value):
    with pytest.raises(ValidationError):
        swarmstack.web_replicas({"num_dynos_web": value})


def test_destroy_needs_confirmation_before_connecting(no_network):
    with pytest.raises(ValidationError):
        swarm.destroy("swm-x", "nowhere.invalid")


def test_swarm_update_status_tasks_and_log_lines_are_parsed():
    from labdeploy.commands import swarm as sc

    states = sc.parse_update_status("a_web\trollback_completed\t2024-05-01 10:00:00 +0000 UTC\tupdate rolled back\n"
                                    "a_worker\t\n")
    assert states["a_web"]["state"] == "rollback_completed" and states["a_web"]["message"] == "update rolled back"
    assert states["a_worker"] == {"state": "", "started": "", "message": ""}
    self_id, rows = sc.parse_service_containers("n1 running abc123\nn2 shutdown \nself n1\n")
    assert self_id == "n1" and rows == [{"node_id": "n1", "state": "running", "container": "abc123"}]
    assert sc.parse_service_log_line("2024-05-01T10:00:00.1Z swm-a_web.2@labsw2    | GET / 200", "swm-a") == (
        "web", "labsw2", "2024-05-01T10:00:00.1Z GET / 200")
    assert sc.parse_service_log_line("error from daemon: no such service", "swm-a")[0] == ""
    assert sc.update_status(["a_web"])[-2:] == ["--", "a_web"]
