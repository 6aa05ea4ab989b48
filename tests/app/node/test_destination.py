"""app.node.destination: ``parse_destination``'s accepted forms and refusals, and STOW-RS delivery
by ``DicomWebDestination`` to a real HTTP server on localhost (``http.server`` in a thread)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.node.destination import DeliveryFailed, DicomWebDestination, DimseDestination, parse_destination
from tests.uvicorn_server import free_port

CALLING = "DENOISE"
NEITHER = "is neither dicom://AE@host:port"


# --- parse_destination --------------------------------------------------------------------------


def test_a_dicom_url_gives_a_dimse_destination() -> None:
    destination = parse_destination("dicom://PACS@pacs.example.org:11112", CALLING)
    assert destination == DimseDestination("PACS", "pacs.example.org", 11112, CALLING)
    assert destination.describe() == "dicom://PACS@pacs.example.org:11112"


def test_a_dicom_url_may_end_with_a_slash() -> None:
    assert parse_destination("dicom://PACS@10.0.0.5:104/", CALLING) == DimseDestination("PACS", "10.0.0.5", 104, CALLING)


def test_the_ae_title_is_stripped_of_padding_and_may_hold_spaces() -> None:
    destination = parse_destination("dicom://MY PACS  @host:104", CALLING)
    assert isinstance(destination, DimseDestination) and destination.ae_title == "MY PACS"


@pytest.mark.parametrize("port", [1, 104, 65535])
def test_ports_within_range_are_taken(port: int) -> None:
    destination = parse_destination(f"dicom://AE@host:{port}", CALLING)
    assert isinstance(destination, DimseDestination) and destination.port == port


@pytest.mark.parametrize("port", [0, 65536, 99999])
def test_ports_out_of_range_are_refused_by_number(port: int) -> None:
    url = f"dicom://AE@host:{port}"
    with pytest.raises(ValueError) as refused:
        parse_destination(url, CALLING)
    assert str(refused.value) == f"port {port} of {url!r} is not 1-65535"


@pytest.mark.parametrize("url", ["http://pacs.example.org/dicom-web", "https://pacs:8443/dicomweb/"])
def test_an_http_url_gives_a_dicomweb_destination_with_that_root(url: str) -> None:
    destination = parse_destination(url, CALLING)
    assert destination == DicomWebDestination(url)
    assert destination.describe() == url


@pytest.mark.parametrize(
    "url",
    [
        "",
        "pacs:104",
        "ftp://pacs/dicom",
        "http://",
        "https://",
        "dicom://pacs:104",  # no AE title
        "dicom://PACS@pacs",  # no port
        "dicom://PACS@pacs:port",
        "dicom://PACS@pacs:123456",  # six digits: not a port at all
        "dicom://SEVENTEEN_CHARSXX@pacs:104",  # an AE title holds at most 16 characters
        "dicom://PACS@pa/cs:104",
        "DICOM://PACS@pacs:104",
    ],
)
def test_other_forms_are_refused_naming_both_accepted_forms(url: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_destination(url, CALLING)
    message = str(refused.value)
    assert repr(url) in message and NEITHER in message and "http(s)://host/path" in message


# --- DicomWebDestination.deliver against a local server ---------------------------------------


@dataclass
class Stow:
    """What the local STOW-RS server answers, and what it was sent."""

    status: int = 200
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture()
def stow() -> Iterator[tuple[Stow, str]]:
    state = Stow()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            answer = b"{}"
            self.send_response(state.status)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx honours proxy variables: localhost must be reached directly whatever the environment.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


INSTANCE = b"\x00" * 128 + b"DICM" + b"\r\n--looks-like-a-boundary\r\n\xff\xfe"


@pytest.mark.parametrize("status", [200, 202])
def test_a_stored_or_accepted_instance_is_delivered(stow: tuple[Stow, str], status: int) -> None:
    state, root = stow
    state.status = status
    DicomWebDestination(root).deliver(INSTANCE)  # no DeliveryFailed
    assert len(state.requests) == 1


def test_the_instance_is_posted_to_studies_under_the_root(stow: tuple[Stow, str]) -> None:
    state, root = stow
    DicomWebDestination(f"{root}/dicom-web/").deliver(INSTANCE)  # a trailing slash is not doubled
    ((path, headers, _),) = state.requests
    assert path == "/dicom-web/studies"
    assert headers["accept"] == "application/dicom+json"


def test_the_body_is_multipart_related_with_one_dicom_part_holding_the_bytes(stow: tuple[Stow, str]) -> None:
    state, root = stow
    DicomWebDestination(root).deliver(INSTANCE)
    ((_, headers, body),) = state.requests
    message = BytesParser(policy=policy.HTTP).parsebytes(
        f"Content-Type: {headers['content-type']}\r\n\r\n".encode() + body
    )
    assert isinstance(message, EmailMessage) and message.defects == []
    assert message.get_content_type() == "multipart/related"
    assert message.get_param("type") == "application/dicom"
    (part,) = message.iter_parts()
    assert part.get_content_type() == "application/dicom"
    assert part.get_payload(decode=True) == INSTANCE


@pytest.mark.parametrize("status", [409, 400, 500])
def test_a_refusal_is_a_failed_delivery_naming_the_status(stow: tuple[Stow, str], status: int) -> None:
    state, root = stow
    state.status = status
    with pytest.raises(DeliveryFailed, match=f"STOW-RS to {root} answered {status}"):
        DicomWebDestination(root).deliver(INSTANCE)


def test_a_closed_port_is_a_failed_delivery_naming_the_error() -> None:
    root = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(DeliveryFailed, match=f"STOW-RS to {root}: ConnectError"):
        DicomWebDestination(root).deliver(INSTANCE)


@pytest.mark.parametrize("url", ["dicom://   @pacs:104", "dicom://A\\B@pacs:104", "http:////"])
def test_blank_or_backslashed_ae_titles_and_hostless_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="is neither"):
        parse_destination(url, "DENOISE")


def test_ipv6_hosts_and_one_letter_hosts_are_taken() -> None:
    assert parse_destination("dicom://PACS@[::1]:104", "DENOISE").host == "::1"  # type: ignore[attr-defined]
    assert parse_destination("http://x", "DENOISE").describe() == "http://x"
