#!/usr/bin/env python3
"""Uploads a file with Python's ftplib (passive, binary), then lists and checks SIZE.
With a 7th argument (a CA file) it uses explicit FTPS: FTP_TLS, AUTH TLS and prot_p()."""
import ftplib
import ssl
import sys

host, port, user, password, local, remote = sys.argv[1:7]
if len(sys.argv) > 7:
    context = ssl.create_default_context(cafile=sys.argv[7])
    ftp = ftplib.FTP_TLS(context=context)
else:
    ftp = ftplib.FTP()
ftp.connect(host, int(port), timeout=30)
ftp.login(user, password)
if isinstance(ftp, ftplib.FTP_TLS):
    ftp.prot_p()
    parent = remote.rsplit("/", 1)[0]
    if parent:
        try:
            ftp.mkd(parent)
        except ftplib.error_perm:
            pass
with open(local, "rb") as f:
    ftp.storbinary(f"STOR {remote}", f, blocksize=256 * 1024)
size = ftp.size(remote)
names = ftp.nlst("/")
ftp.quit()
print(f"size={size} names={names}")
