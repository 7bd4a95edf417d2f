#!/usr/bin/env python3
"""Resident memory of a running stickylb per idle client connection.

Starts the release binary (build it first) on loopback in front of one
`python3 -m http.server` backend, opens N client connections that each
complete one keep-alive request (one after another, so the proxy needs a
single backend connection) and then stay silent, and prints the proxy's
RSS before and after and the difference per connection. Everything it
starts is stopped by PID.

    python3 benches/idle_rss.py [N]      # default 10000
"""
import os, resource, signal, socket, subprocess, sys, tempfile, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "stickylb")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < N + 100:
        sys.exit(f"open files limit {hard} is too low for {N} connections")
    port, admin, backend = free_port(), free_port(), free_port()
    tmp = tempfile.mkdtemp()
    cfg = os.path.join(tmp, "config.toml")
    with open(cfg, "w") as f:
        f.write(
            f'[listen]\naddress = "127.0.0.1:{port}"\n[admin]\naddress = "127.0.0.1:{admin}"\n'
            '[timeouts]\nclient_header_read = "10m"\nidle = "10m"\n'
            f'[[backend]]\nname = "b1"\naddress = "127.0.0.1:{backend}"\n'
        )
    origin = subprocess.Popen([sys.executable, "-m", "http.server", str(backend),
                               "--bind", "127.0.0.1", "--directory", tmp],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.Popen([BIN, "--threads", "1", "--config", cfg],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(200):  # at most 20 s for the listening line
            line = proc.stderr.readline()
            if "listening on" in line:
                break
        else:
            sys.exit("stickylb did not start")
        with open(os.path.join(tmp, "hello.txt"), "w") as f:
            f.write("hello\n")
        request = b"GET /hello.txt HTTP/1.1\r\nHost: a\r\nX-Client-Id: idle\r\n\r\n"

        def exchange(s):
            """One request on `s`; the response's status code."""
            s.settimeout(10)
            s.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    sys.exit("connection closed early")
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                body += s.recv(4096)
            return int(head.split(b" ")[1])

        for _ in range(50):  # the origin may still be starting: at most 5 s
            warm = socket.create_connection(("127.0.0.1", port))
            status = exchange(warm)
            warm.close()
            if status == 200:
                break
            time.sleep(0.1)
        else:
            sys.exit("no 200 through the proxy")
        time.sleep(0.5)
        before = rss_kib(proc.pid)
        conns = []
        for i in range(N):
            s = socket.create_connection(("127.0.0.1", port))
            if exchange(s) != 200:
                sys.exit(f"request {i} failed")
            conns.append(s)
        time.sleep(1.0)
        after = rss_kib(proc.pid)
        print(f"connections: {N}")
        print(f"RSS before: {before} KiB, after: {after} KiB")
        print(f"per idle connection: {(after - before) * 1024 / N:.0f} bytes")
        for s in conns:
            s.close()
    finally:
        for p in (proc, origin):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


if __name__ == "__main__":
    main()
