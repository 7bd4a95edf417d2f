#!/usr/bin/env python3
"""Resident memory of a running stickylb per idle client connection.

Starts the release binary (build it first) on loopback with one built-in
demo backend, opens N client connections that each complete one keep-alive
request and then stay silent, and prints the proxy's RSS before and after
and the difference per connection. Everything it starts is stopped by PID.

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
    proc = subprocess.Popen([BIN, "--threads", "1", "--config", cfg, "demo"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(200):  # at most 20 s for the listening line
            line = proc.stderr.readline()
            if "listening on" in line:
                break
        else:
            sys.exit("stickylb did not start")
        request = b"GET / HTTP/1.1\r\nHost: a\r\nX-Client-Id: idle\r\n\r\n"
        warm = socket.create_connection(("127.0.0.1", port))
        warm.sendall(request)
        warm.recv(4096)
        warm.close()
        time.sleep(0.5)
        before = rss_kib(proc.pid)
        conns = []
        for i in range(N):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(request)
            conns.append(s)
        for s in conns:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    sys.exit("connection closed early")
                data += chunk
        time.sleep(1.0)
        after = rss_kib(proc.pid)
        print(f"connections: {N}")
        print(f"RSS before: {before} KiB, after: {after} KiB")
        print(f"per idle connection: {(after - before) * 1024 / N:.0f} bytes")
        for s in conns:
            s.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
