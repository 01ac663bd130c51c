"""web.websocket's reading of the token from the environ, against werkzeug's (pure, no server)."""
import pytest
from werkzeug.wrappers import Request

from fonana_realtime.web.websocket import _bearer, _query_token

QUERIES = ["", "token=abc", "a=1&token=abc&token=def", "token=", "token", "tok%65n=x", "token=a%2Bb+c",
           "token=%ZZ", "token=%ff%fe", "x=1", "token=a&x=%", "token=eyJ.eyJ.sig&v=2", "%74oken=q",
           "token=\u00ff".encode("utf-8").decode("latin-1"), "token=a;b", "Token=x", "token=a=b"]


@pytest.mark.parametrize("query", QUERIES)
def test_the_query_token_is_the_one_werkzeug_reads(query):
    environ = {"QUERY_STRING": query, "REQUEST_METHOD": "GET", "wsgi.url_scheme": "http",
               "SERVER_NAME": "x", "SERVER_PORT": "80", "PATH_INFO": "/ws"}
    assert _query_token(environ) == Request(environ).args.get("token")


def test_raw_bytes_that_are_not_utf8_give_a_token_that_cannot_verify():
    assert _query_token({"QUERY_STRING": "token=\xff\xfe"}) == "\ufffd\ufffd"


@pytest.mark.parametrize("header, token", [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Bearer ", None),
                                           ("Basic abc", None), ("abc", None), ("", None)])
def test_the_bearer_token(header, token):
    assert _bearer({"HTTP_AUTHORIZATION": header} if header else {}) == token
