#!/usr/bin/env python3
"""Uploads a file with paramiko (password login), then stats it and lists its directory."""
import sys

import paramiko

host, port, user, password, local, remote = sys.argv[1:7]
transport = paramiko.Transport((host, int(port)))
transport.connect(username=user, password=password)
sftp = paramiko.SFTPClient.from_transport(transport)
sftp.put(local, remote)
size = sftp.stat(remote).st_size
names = sftp.listdir("/")
sftp.close()
transport.close()
print(f"size={size} names={names}")
