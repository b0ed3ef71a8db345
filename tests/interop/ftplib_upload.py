#!/usr/bin/env python3
"""Uploads a file with Python's ftplib (passive, binary), then lists and checks SIZE."""
import ftplib
import sys

host, port, user, password, local, remote = sys.argv[1:7]
ftp = ftplib.FTP()
ftp.connect(host, int(port), timeout=30)
ftp.login(user, password)
with open(local, "rb") as f:
    ftp.storbinary(f"STOR {remote}", f, blocksize=256 * 1024)
size = ftp.size(remote)
names = ftp.nlst("/")
ftp.quit()
print(f"size={size} names={names}")
