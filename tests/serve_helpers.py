"""A real `llmc serve` subprocess on 127.0.0.1 (port picked by the server) for the serving tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Reply:
    status_code: int
    text: str

    def json(self):
        return json.loads(self.text)


class ServerProcess:
    def __init__(self, artifact: Path, *args: str, api_key: str | None = None):
        command = [sys.executable, "-m", "llmc", "serve", str(artifact), "--port", "0", *args]
        if api_key:
            command += ["--api-key", api_key]
        self.api_key = api_key
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError(f"llmc serve exited with {self.proc.wait()}: {''.join(self.log)}")
            self.log.append(line)
            found = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
            if found:
                self.base = f"http://127.0.0.1:{found.group(1)}"
                return
        raise RuntimeError("llmc serve did not start")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, **kwargs):
        import openai

        return openai.OpenAI(base_url=self.base + "/v1", api_key=self.api_key or "none", max_retries=0, **kwargs)

    def request(self, route: str, body: dict | bytes | None = None) -> Reply:
        """A plain HTTP request (GET without ``body``, else POST) that returns errors instead of raising."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + route, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return Reply(response.status, response.read().decode())
        except urllib.error.HTTPError as err:
            return Reply(err.code, err.read().decode())

    def metrics(self) -> dict[str, float]:
        text = self.request("/metrics").text
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024

    def terminate(self, timeout: float = 60) -> tuple[int, str]:
        """SIGTERM; return the exit code and what the server wrote to stderr."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, "".join(self.log) + (err or "")
