use super::{
    Reply,
    command::Command,
    error::{ControlChanError, ControlChanErrorKind},
    line_parser,
};

use bytes::BytesMut;
use std::io::Write;
use tokio_util::codec::{Decoder, Encoder};

// FTPCodec implements tokio's `Decoder` and `Encoder` traits for the control channel, that we'll
// use to decode FTP commands and encode their responses.
pub struct FtpCodec {
    // Stored index of the next index to examine for a '\n' character. This is used to optimize
    // searching. For example, if `decode` was called with `abc`, it would hold `3`, because that
    // is the next index to examine. The next time `decode` is called with `abcde\n`, we will only
    // look at `de\n` before returning.
    next_index: usize,
    // ingest-bridge patch: an `ABOR\r` was taken without its `\n` (see `urgent_abor`), which
    // is dropped if it still comes.
    skip_lf: bool,
}

impl FtpCodec {
    pub fn new() -> Self {
        FtpCodec { next_index: 0, skip_lf: false }
    }
}

/// ingest-bridge patch: Python's ftplib sends `ABOR\r\n` as urgent data, and the kernel takes
/// the last byte, the `\n`, out of the stream as the urgent byte. `ABOR\r` with nothing after
/// it is then the whole command: the client waits for its reply.
fn urgent_abor(pending: &[u8]) -> bool {
    pending.len() == 5 && pending[..4].eq_ignore_ascii_case(b"ABOR") && pending[4] == b'\r'
}

/// ingest-bridge patch: the longest command line accepted, line end included. Real clients'
/// lines (a long path in STOR) stay well under 1 KiB; unbounded, a client that never ends its
/// line grew the buffer until memory ran out, before logging in.
pub const MAX_COMMAND_LINE: usize = 4096;

// ingest-bridge patch: Telnet (RFC 854) on the control connection, as RFC 959 §4.1.3 has
// clients send it before ABOR: IAC IP (interrupt) and the Synch, IAC DM. lftp's Ctrl-C sends
// them, and upstream closed the session with "500 Invalid UTF8 in command".
const IAC: u8 = 255;
/// The first Telnet command byte (SE); below it, a byte after IAC is not a command.
const FIRST_COMMAND: u8 = 240;
/// WILL, WONT, DO and DONT take an option byte.
const WILL: u8 = 251;
const DONT: u8 = 254;

/// How many bytes the Telnet sequence at the start of `bytes` (an IAC) takes out of the
/// stream, or `None` until it is complete. `IAC IAC` is a literal 255: one byte goes.
fn telnet_sequence(bytes: &[u8]) -> Option<usize> {
    match *bytes.get(1)? {
        IAC => Some(1),
        WILL..=DONT if bytes.len() < 3 => None,
        WILL..=DONT => Some(3),
        FIRST_COMMAND.. => Some(2),
        // A Synch's DM sent as TCP urgent data is taken out of the stream by the kernel: the
        // IAC before it is followed by the next command's first byte, which is kept.
        _ => Some(1),
    }
}

impl Decoder for FtpCodec {
    type Item = Command;
    type Error = ControlChanError;

    // Here we decode the incoming bytes into a meaningful command. We'll split on newlines, and
    // parse the resulting line using `Command::parse()`. This method will be called by tokio.
    //
    // ingest-bridge patch: Telnet commands are taken out of the line (see `telnet_sequence`),
    // and a line longer than `MAX_COMMAND_LINE` is an error, with no more than that buffered.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Command>, Self::Error> {
        if self.skip_lf && !buf.is_empty() {
            self.skip_lf = false;
            if buf[0] == b'\n' {
                let _ = buf.split_to(1);
            }
        }
        let mut index = self.next_index;
        while index < buf.len() && index < MAX_COMMAND_LINE {
            match buf[index] {
                b'\n' => {
                    let line = buf.split_to(index + 1);
                    self.next_index = 0;
                    return Ok(Some(line_parser::parse(line)?));
                }
                IAC => {
                    let Some(len) = telnet_sequence(&buf[index..]) else {
                        break;
                    };
                    buf.copy_within(index + len.., index);
                    buf.truncate(buf.len() - len);
                    if len == 1 && buf.get(index) == Some(&IAC) {
                        index += 1;
                    }
                }
                _ => index += 1,
            }
        }
        if index == buf.len() && urgent_abor(buf) {
            let line = buf.split_to(index);
            self.next_index = 0;
            self.skip_lf = true;
            return Ok(Some(line_parser::parse(line)?));
        }
        self.next_index = index;
        if index >= MAX_COMMAND_LINE {
            return Err(ControlChanErrorKind::CommandLineTooLong.into());
        }
        Ok(None)
    }
}

impl Encoder<Reply> for FtpCodec {
    type Error = ControlChanError;

    // Here we encode the outgoing response
    fn encode(&mut self, reply: Reply, buf: &mut BytesMut) -> Result<(), Self::Error> {
        let mut buffer = vec![];
        match reply {
            Reply::None => {
                return Ok(());
            }
            Reply::CodeAndMsg { code, msg } => {
                if msg.is_empty() {
                    writeln!(buffer, "{}\r", code as u32)?;
                } else {
                    writeln!(buffer, "{} {}\r", code as u32, msg)?;
                }
            }
            Reply::MultiLine { code, mut lines } => {
                // Get the last line since it needs to be preceded by the response code.
                let last_line = lines.pop().unwrap_or_default();

                // Lines starting with a digit should be indented
                for it in lines.iter_mut() {
                    if it.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                        it.insert(0, ' ');
                    }
                }
                if lines.is_empty() {
                    writeln!(buffer, "{} {}\r", code as u32, last_line)?;
                } else {
                    write!(buffer, "{}-{}\r\n{} {}\r\n", code as u32, lines.join("\r\n"), code as u32, last_line)?;
                }
            }
        }
        buf.extend(&buffer);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::ReplyCode;
    use super::*;

    #[test]
    fn encode_multiline_reply_with_blank_line_does_not_panic() {
        let mut codec = FtpCodec::new();
        let mut buf = BytesMut::new();
        let reply = Reply::new_multiline(ReplyCode::HelpMessage, vec!["Usage: foo", "", "Options:"]);

        codec.encode(reply, &mut buf).unwrap();

        assert_eq!(buf, "214-Usage: foo\r\n\r\n214 Options:\r\n".as_bytes());
    }
}
