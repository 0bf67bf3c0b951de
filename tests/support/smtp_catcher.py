"""A real SMTP server for the test suite: aiosmtpd on 127.0.0.1, every message it receives kept in
a directory, decoded by Python's `email` package.

    python smtp_catcher.py --port N --dir DIR

`--port 0` lets the kernel pick a free port. Once the server accepts connections it prints one
line, `listening 127.0.0.1:PORT`, on stdout. It runs until it is killed or its stdin closes, so a
test process that dies (even by SIGKILL, closing the pipe) takes it along.

Each message becomes, in arrival order n = 1, 2, ... (after the highest already in DIR, so a
catcher started again on the same directory goes on counting):

- `DIR/<n>.eml`: the DATA bytes as received (line endings included, dot-unstuffed);
- `DIR/<n>.json`: the envelope and the decoded message:
  `{"mail_from", "rcpt_tos", "auth_login", "auth_password", "headers", "subject", "text",
  "html", "decode_error"}`. Headers and the subject are decoded (RFC 2047); `text` and `html`
  are the bodies of the text/plain and text/html parts (quoted-printable and base64 undone,
  charset applied, line breaks "\n"), or null when there is no such part.

Both are written to a temporary name first and renamed into place, the .json last: a reader that
sees `<n>.json` finds both files whole.

No STARTTLS. AUTH PLAIN and LOGIN are offered over plain text and any credentials are accepted
(what was sent is kept as auth_login/auth_password); a client that does not authenticate may
send all the same.
"""

import argparse
import email
import email.policy
import json
import os
import re
import socket
import sys
import threading
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

NAME = re.compile(r"^(\d+)\.json$")


def decoded(raw):
    """The decoded parts of a message, for the .json sidecar."""
    # Parsed with "\n" line endings: the bodies then come out with "\n" too.
    text = raw.replace(b"\r\n", b"\n")
    msg = email.message_from_bytes(text, policy=email.policy.default)
    fields = {
        "headers": [[name, str(value)] for name, value in msg.items()],
        "subject": str(msg.get("subject", "")),
        "text": None,
        "html": None,
    }
    for key, subtype in (("text", "plain"), ("html", "html")):
        part = msg.get_body(preferencelist=(subtype,))
        if part is not None:
            fields[key] = part.get_content()
    return fields


def write_atomically(path, data):
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


class Keeper:
    """The aiosmtpd handler: keeps each message in the directory."""

    def __init__(self, directory):
        self.directory = directory
        self.lock = threading.Lock()
        numbers = [int(m.group(1)) for m in map(NAME.match, os.listdir(directory)) if m]
        self.last = max(numbers, default=0)

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or b""
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "auth_login": None,
            "auth_password": None,
            "decode_error": None,
        }
        auth = getattr(session, "auth_data", None)
        if auth is not None and hasattr(auth, "login"):
            record["auth_login"] = auth.login.decode("utf-8", "replace")
            record["auth_password"] = auth.password.decode("utf-8", "replace")
        try:
            record.update(decoded(raw))
        except Exception as e:  # Kept all the same: the test says what could not be decoded.
            record.update(headers=[], subject="", text=None, html=None)
            record["decode_error"] = f"{type(e).__name__}: {e}"
        with self.lock:
            self.last += 1
            n = self.last
        base = os.path.join(self.directory, str(n))
        write_atomically(base + ".eml", raw)
        write_atomically(base + ".json", json.dumps(record, indent=1).encode())
        return "250 2.0.0 OK: kept as %d" % n


def accept_any(server, session, envelope, mechanism, auth_data):
    return AuthResult(success=True, auth_data=auth_data)


class BoundController(Controller):
    """A Controller serving on a socket bound beforehand: port 0 gets a free port from the kernel
    without a race, and a taken port fails at once rather than after the ready timeout."""

    def __init__(self, handler, sock, **kwargs):
        host, port = sock.getsockname()[:2]
        super().__init__(handler, hostname=host, port=port, **kwargs)
        self.sock = sock

    def _create_server(self):
        return self.loop.create_server(self._factory_invoker, sock=self.sock, ssl=self.ssl_context)


def main():
    # aiosmtpd itself sets the deprecated attribute on every AUTH.
    warnings.filterwarnings("ignore", message="Session.login_data is deprecated")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="0: a free one")
    parser.add_argument("--dir", required=True, help="where the messages go")
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    try:
        # SO_REUSEADDR (set by create_server): a port just freed by a stopped catcher, its
        # connections in TIME_WAIT, can be taken again at once.
        sock = socket.create_server(("127.0.0.1", args.port))
    except OSError as e:
        print(f"smtp_catcher: cannot listen on 127.0.0.1:{args.port}: {e}", file=sys.stderr)
        sys.exit(2)
    controller = BoundController(
        Keeper(args.dir),
        sock,
        server_hostname="smtp-catcher.test",
        authenticator=accept_any,
        auth_require_tls=False,
    )
    controller.start()
    print(f"listening 127.0.0.1:{sock.getsockname()[1]}", flush=True)
    # Until stdin closes (the test process ended); SIGTERM and SIGKILL end it anyway.
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except KeyboardInterrupt:
        pass
    controller.stop()


if __name__ == "__main__":
    main()
