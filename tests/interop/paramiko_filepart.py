#!/usr/bin/env python3
"""WinSCP's way with paramiko: upload as NAME.filepart, then rename to NAME; prints the
final size and whether the temporary name is gone."""
import sys

import paramiko

host, port, user, password, local, remote = sys.argv[1:7]
transport = paramiko.Transport((host, int(port)))
transport.connect(username=user, password=password)
sftp = paramiko.SFTPClient.from_transport(transport)
sftp.put(local, remote + ".filepart")
sftp.rename(remote + ".filepart", remote)
size = sftp.stat(remote).st_size
try:
    sftp.stat(remote + ".filepart")
    temp_gone = False
except FileNotFoundError:
    temp_gone = True
sftp.close()
transport.close()
print(f"size={size} temp_gone={temp_gone}")
