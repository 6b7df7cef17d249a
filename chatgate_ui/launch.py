"""`make ui`: chatgate and its Streamlit app together, for a local try-out.

Starts `chatgate serve`, waits until it answers, starts the app pointed at it
(CHATGATE_URL), opens the browser on the app and stops both on Ctrl-C.
"""

import argparse
import os
import signal
import subprocess
import sys
import time
import webbrowser
from pathlib import Path

import requests

APP = Path(__file__).with_name("app.py")
START_SECONDS = 60.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="where both listen")
    parser.add_argument("--port", type=int, default=8009, help="chatgate's port")
    parser.add_argument("--ui-port", type=int, default=8501, help="the app's port")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")
    args = parser.parse_args(argv)
    bin_dir = Path(sys.executable).parent
    api = f"http://{args.host}:{args.port}"
    ui = f"http://{args.host}:{args.ui_port}"
    children: list[subprocess.Popen[bytes]] = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        children.append(
            subprocess.Popen(  # noqa: S603 - our own command
                [str(bin_dir / "chatgate"), "serve", "--host", args.host, "--port", str(args.port)]
            )
        )
        if not _answers(f"{api}/healthz", children[0]):
            print("chatgate did not start; see its messages above", file=sys.stderr)
            return 1
        children.append(
            subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                [
                    sys.executable,
                    "-m",
                    "streamlit",
                    "run",
                    str(APP),
                    "--server.address",
                    args.host,  # like chatgate: this machine only, unless asked
                    "--server.port",
                    str(args.ui_port),
                    "--server.headless",
                    "true",  # no first-run e-mail prompt; the browser is opened below
                    "--browser.gatherUsageStats",
                    "false",  # users run offline: nothing leaves the machine
                    "--client.showErrorDetails",
                    "none",
                    "--client.toolbarMode",
                    "viewer",
                ],
                env={**os.environ, "CHATGATE_URL": api},
            )
        )
        if not _answers(f"{ui}/_stcore/health", children[1]):
            print("the Streamlit app did not start; see its messages above", file=sys.stderr)
            return 1
        print(f"\n  chatgate: {api}   (API explorer: {api}/docs)\n  the app:  {ui}\n", flush=True)
        if not args.no_browser:
            webbrowser.open(ui)
        return children[1].wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()


def _answers(url: str, process: "subprocess.Popen[bytes]") -> bool:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return False


if __name__ == "__main__":
    sys.exit(main())
