"""The HTTP/JSON API (daemon.gateway) against a real 3-node cluster, with httpx."""

from __future__ import annotations

import re
from types import SimpleNamespace

from daemon.gateway.app import build_app
from tests.http_cluster import http_cluster  # noqa: F401 - the fixture


def test_every_node_says_its_status_and_names_the_same_leader(http_cluster):
    leader = http_cluster.leader()
    for i in http_cluster.ids:
        with http_cluster.http(i) as web:
            reply = web.get("/v1/status")
            assert reply.status_code == 200
            status = reply.json()
            assert status["id"] == i and status["leader"] == leader
            assert status["leader_url"] == http_cluster.url(leader)


def test_the_openapi_document_describes_every_route_and_nothing_else(http_cluster):
    app = build_app(SimpleNamespace(metrics_sockets=set()))
    routes = {(re.sub(r"\{(\w+):\w+\}", r"{\1}", r.path), method.lower())
              for r in app.routes for method in r.methods if method != "HEAD"}
    with http_cluster.http(1) as web:
        doc = web.get("/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    described = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert routes - described == set(), "routes the document does not describe"
    assert described - routes == set(), "paths the document describes that the app lacks"


def test_liveness_readiness_and_metrics_answer_on_every_node(http_cluster):
    for i in http_cluster.ids:
        with http_cluster.http(i) as web:
            assert web.get("/livez").text == "ok\n"
            ready = web.get("/readyz")
            assert ready.status_code == 200 and ready.json()["ready"] is True
            metrics = web.get("/metrics")
            assert metrics.status_code == 200
            assert "paxosd_server_has_leader 1" in metrics.text


def test_members_name_every_nodes_api_url(http_cluster):
    with http_cluster.http(2) as web:
        reply = web.get("/v1/members")
    assert reply.status_code == 200
    members = {m["id"]: m for m in reply.json()["members"]}
    assert {i: m["url"] for i, m in members.items()} == http_cluster.urls
    assert all(m["voter"] for m in members.values())


def test_an_unknown_route_and_a_wrong_method_are_problems_with_stable_codes(http_cluster):
    with http_cluster.http(1) as web:
        missing = web.get("/v1/nothing")
        wrong = web.post("/v1/status")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["code"] == "not-found" and "/v1/nothing" in missing.json()["detail"]
    assert wrong.status_code == 405 and wrong.json()["code"] == "method-not-allowed"
    assert "GET" in wrong.headers["allow"] and "POST" in wrong.json()["detail"]
