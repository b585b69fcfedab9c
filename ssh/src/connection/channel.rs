//! One channel's state: its place in the open/EOF/close state machine (RFC 4254 §5.1, §5.3),
//! both windows, and the requests awaiting replies in either direction.

use std::collections::VecDeque;

/// Where a channel is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// We sent CHANNEL_OPEN and await the confirmation or failure.
    Opening,
    /// The peer sent CHANNEL_OPEN and the application has not answered yet.
    PeerOpening,
    /// Confirmed, in either direction.
    Open,
    /// Finished (both CLOSEs exchanged, or our open failed); the id is freed once the
    /// application has polled the event that says so, so it is never reused before then.
    Dead,
}

impl State {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            State::Opening => "opening (awaiting the peer's confirmation)",
            State::PeerOpening => "being opened by the peer (not yet confirmed)",
            State::Open => "open",
            State::Dead => "closed",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Channel {
    pub(crate) state: State,
    /// The peer's id for this channel (the recipient of everything we send on it).
    pub(crate) peer_id: u32,

    /// How many bytes the peer lets us send now.
    pub(crate) send_window: u32,
    /// The peer's maximum packet size (data bytes per CHANNEL_DATA).
    pub(crate) peer_max_packet: u32,

    /// The window we grant the peer: at any time `recv_window + unconsumed + credit ==
    /// window_max`, so the application never holds more than `window_max` unconsumed bytes.
    pub(crate) window_max: u32,
    /// How much the peer may still send.
    pub(crate) recv_window: u32,
    /// Delivered to the application, not consumed yet.
    pub(crate) unconsumed: u32,
    /// Consumed, not yet announced with a WINDOW_ADJUST.
    pub(crate) credit: u32,

    pub(crate) sent_eof: bool,
    pub(crate) recv_eof: bool,
    pub(crate) sent_close: bool,
    /// The peer's CLOSE arrived and is not answered yet (`answer_close` off).
    pub(crate) recv_close: bool,
    /// `eof()` / `close()` called before the peer confirmed our open.
    pub(crate) eof_pending: bool,
    pub(crate) close_pending: bool,

    /// Our requests that wanted a reply and have none yet (replies come in order).
    pub(crate) our_pending: u64,
    /// The peer's requests that wanted a reply, oldest first: `None` until the application
    /// answers; replies leave from the front only, so they go out in request order.
    pub(crate) peer_pending: VecDeque<Option<bool>>,
    /// The sequence number (0 = the first want-reply request on this channel) of the front of
    /// `peer_pending`.
    pub(crate) peer_seq_base: u64,
}

impl Channel {
    pub(crate) fn new(state: State, window_max: u32) -> Self {
        Channel {
            state,
            peer_id: 0,
            send_window: 0,
            peer_max_packet: 0,
            window_max,
            recv_window: window_max,
            unconsumed: 0,
            credit: 0,
            sent_eof: false,
            recv_eof: false,
            sent_close: false,
            recv_close: false,
            eof_pending: false,
            close_pending: false,
            our_pending: 0,
            peer_pending: VecDeque::new(),
            peer_seq_base: 0,
        }
    }

    /// Open, and neither our EOF nor our CLOSE sent: data may go out.
    pub(crate) fn can_send(&self) -> bool {
        self.state == State::Open && !self.sent_eof && !self.sent_close
    }

    /// The application consumed `n` received bytes (clamped to what it holds). Returns the
    /// credit to announce in a WINDOW_ADJUST now, if any.
    ///
    /// OpenSSH's rule (announce once the peer's remaining window is below half), batched:
    /// the credit goes out when it reaches half the window, or when the remaining window is
    /// below half and the credit is at least a packet's worth (or the remaining window is
    /// itself below a packet). So a reader that consumes in small steps does not cause one
    /// adjust per step, and a reader holding most of its window still never leaves the peer
    /// at zero while it has consumed something.
    pub(crate) fn consume(&mut self, n: usize, max_packet: u32) -> Option<u32> {
        let n = n.min(self.unconsumed as usize) as u32;
        self.unconsumed -= n;
        self.credit += n;
        if self.credit == 0 || self.recv_eof || self.sent_close || self.state != State::Open {
            return None;
        }
        let half = self.window_max / 2;
        let packet = max_packet.min(half).max(1);
        let due = self.credit >= half.max(1)
            || (self.recv_window < half && (self.credit >= packet || self.recv_window < max_packet));
        if !due {
            return None;
        }
        let credit = std::mem::take(&mut self.credit);
        self.recv_window += credit;
        Some(credit)
    }

    /// Gives the front replies that are answered, in order, removing them.
    pub(crate) fn take_ready_reply(&mut self) -> Option<bool> {
        match self.peer_pending.front() {
            Some(Some(success)) => {
                let success = *success;
                self.peer_pending.pop_front();
                self.peer_seq_base += 1;
                Some(success)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(window: u32) -> Channel {
        let mut ch = Channel::new(State::Open, window);
        ch.send_window = 0;
        ch
    }

    /// The peer sent `n` bytes and the application got them.
    fn receive(ch: &mut Channel, n: u32) {
        assert!(n <= ch.recv_window);
        ch.recv_window -= n;
        ch.unconsumed += n;
    }

    #[test]
    fn credit_waits_for_half_the_window() {
        let mut ch = open(1000);
        // The peer still has more than half: credit waits until it is half the window.
        receive(&mut ch, 400);
        assert_eq!(ch.consume(100, 100), None);
        assert_eq!(ch.consume(299, 100), None);
        assert_eq!(ch.recv_window + ch.unconsumed + ch.credit, 1000);
        receive(&mut ch, 600);
        // Now the peer is below half and the credit is worth a packet.
        assert_eq!(ch.consume(1, 100), Some(400));
        assert_eq!(ch.recv_window, 400);
        assert_eq!(ch.recv_window + ch.unconsumed + ch.credit, 1000);
        // Consuming more than held is clamped.
        assert_eq!(ch.consume(10_000, 100), Some(600));
        assert_eq!((ch.recv_window, ch.unconsumed, ch.credit), (1000, 0, 0));
        // Below a packet's worth while the peer has room: nothing.
        receive(&mut ch, 600);
        assert_eq!(ch.consume(99, 100), None);
    }

    #[test]
    fn reader_holding_most_of_the_window_still_credits_a_packet() {
        let mut ch = open(1 << 20);
        receive(&mut ch, 1 << 20);
        // Holds almost everything; consumes one packet at a time.
        assert_eq!(
            ch.consume(100, 32768),
            Some(100),
            "peer at zero window: credit at once"
        );
        assert_eq!(ch.consume(100, 32768), Some(100), "still below a packet");
        receive(&mut ch, 200);
        let mut sent = 0;
        for _ in 0..64 {
            sent += ch.consume(1024, 32768).unwrap_or(0);
        }
        assert_eq!(sent, 65536, "all consumed credit announced");
        assert_eq!(ch.recv_window + ch.unconsumed + ch.credit, 1 << 20);
    }

    #[test]
    fn no_credit_after_eof_or_close() {
        let mut ch = open(100);
        receive(&mut ch, 100);
        ch.recv_eof = true;
        assert_eq!(ch.consume(100, 10), None);
        let mut ch = open(100);
        receive(&mut ch, 100);
        ch.sent_close = true;
        assert_eq!(ch.consume(100, 10), None);
    }

    #[test]
    fn tiny_windows_do_not_divide_by_zero() {
        let mut ch = open(1);
        receive(&mut ch, 1);
        assert_eq!(ch.consume(1, 32768), Some(1));
        let mut ch = open(0);
        assert_eq!(ch.consume(1, 0), None);
    }
}
