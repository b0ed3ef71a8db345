#!/usr/bin/env python3
"""paramiko's default put, then its default get (which asks for the whole file before it
reads a reply: one READ per 32 KiB in flight) of one large file; prints the seconds each
took. The caller checks the bytes."""
import sys
import time

import paramiko

host, port, user, password, local, remote, back = sys.argv[1:8]
transport = paramiko.Transport((host, int(port)))
transport.connect(username=user, password=password)
sftp = paramiko.SFTPClient.from_transport(transport)
# A session that hangs must fail the check, not the CI run's time limit.
sftp.get_channel().settimeout(120)
start = time.monotonic()
sftp.put(local, remote)
put = time.monotonic() - start
start = time.monotonic()
sftp.get(remote, back)
get = time.monotonic() - start
sftp.close()
transport.close()
print(f"put={put:.1f}s get={get:.1f}s")
