"""GET /health and GET /ready (PROTOCOL.md section 4)."""
import pytest

pytestmark = pytest.mark.postgres


def test_health_is_200_without_a_key(server):
    r = server.get("/health")
    assert r.status_code == 200, (r.status_code, r.text[:300])


def test_ready_is_200_with_the_database_up(server):
    r = server.get("/ready")
    assert r.status_code == 200, (r.status_code, r.text[:300])


def test_plain_get_of_ws_without_upgrade_is_a_client_error(server):
    # no upgrade, no token: refused as the client's fault, never a 500
    r = server.get("/ws")
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])


def test_metrics_need_the_key_by_default(server):
    assert server.get("/metrics").status_code == 401
    assert server.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert server.get("/stats").status_code == 401


def test_metrics_are_prometheus_text(server, seed):
    uid = seed.user()
    server.connect(uid).ping()
    r = server.get("/metrics", headers={"Authorization": f"Bearer {server.api_key}"})
    assert r.status_code == 200, (r.status_code, r.text[:300])
    assert r.headers.get("Content-Type", "").startswith("text/plain"), r.headers
    assert "# TYPE " in r.text and "# HELP " in r.text, r.text[:500]
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name_and_labels, _, value = line.rpartition(" ")
            float(value)  # every sample line ends with a number
            assert name_and_labels, line


def test_stats_are_json(server):
    r = server.get("/stats", headers={"Authorization": f"Bearer {server.api_key}"})
    assert r.status_code == 200, (r.status_code, r.text[:300])
    assert isinstance(r.json(), dict) and r.json()


def test_ready_and_health_answer_head_free_json_or_text(server):
    # operators' probes: no key needed, never a redirect
    for path in ("/health", "/ready"):
        r = server.get(path, allow_redirects=False)
        assert r.status_code == 200, (path, r.status_code)


def test_plain_http_get_of_the_websocket_endpoints_is_426_json(server):
    for path in ("/ws", "/"):
        r = server.get(path)
        assert r.status_code == 426, (path, r.status_code, r.text)
        assert r.headers["Upgrade"].lower() == "websocket"
        assert r.json()["error"] == "upgrade_required"
