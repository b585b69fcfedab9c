#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/seeds/<target>/), small and checked in.

    python3 fuzz/seeds/generate.py          # from the repository root

Deterministic: rerunning it rewrites the same files. The recording seeds need the
`cryptography` module (Debian: python3-cryptography) to seal a real log to the fuzzing key
(SECRET in fuzz_targets/recording.rs); everything else is plain bytes.
"""

import hashlib
import hmac
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def out(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def be16(x):
    return struct.pack(">H", x)


def be32(x):
    return struct.pack(">I", x)


# ---------------------------------------------------------------------------------------
# config: the shipped configurations and a few small ones.

def config_seeds():
    for name in ["minimal.toml", "demo.toml", "example-full.toml", "identities.toml"]:
        with open(os.path.join(ROOT, "configs", name), "rb") as f:
            out("config", name, f.read())
    out("config", "policy.toml", b'''[[vnet]]
name = "corp"
id = 7
ingress = ["veth0", { interface = "eth1", vlan = 100 }]
table = 101

[[target]]
hostname = "web-01"
ipv4 = "198.18.10.10"
ipv6 = "2001:db8::10"
vnet = "corp"

[[application]]
name = "ssh"
target = [{ hostname = "web-01", ports = [22, 2222] }]

[[identity]]
email = "alice@example.com"
groups = ["ops"]
sources = ["198.18.1.2", "2001:db8:1::/64"]
vnet = "corp"

[[policy]]
name = "ops"
application = "ssh"
action = "allow"
precedence = 1
include = [{ group = "ops" }]
require = [{ email_domain = "example.com" }]
exclude = [{ source = "198.18.1.99/32" }]
logins = ["root"]
email_prefix_login = true
forwarding = ["local"]

[[listener]]
listen = "127.0.0.1:2222"
target = "web-01"
vnet = "corp"
''')


# ---------------------------------------------------------------------------------------
# recording: a real log sealed to the fuzzing key (HPKE base mode, X25519 / HKDF-SHA256 /
# ChaCha20-Poly1305, RFC 9180), as the writer makes it.

def hkdf_extract(salt, ikm):
    return hmac.new(salt or b"\0" * 32, ikm, hashlib.sha256).digest()


def hkdf_expand(prk, info, n):
    out_, t, i = b"", b"", 1
    while len(out_) < n:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out_ += t
        i += 1
    return out_[:n]


def labeled_extract(suite, salt, label, ikm):
    return hkdf_extract(salt, b"HPKE-v1" + suite + label + ikm)


def labeled_expand(suite, prk, label, info, n):
    return hkdf_expand(prk, be16(n) + b"HPKE-v1" + suite + label + info, n)


def seal_blocks(secret, ephemeral, blocks):
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from cryptography.hazmat.primitives import serialization

    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    sk_r = X25519PrivateKey.from_private_bytes(secret)
    pk_r = sk_r.public_key().public_bytes(*raw)
    sk_e = X25519PrivateKey.from_private_bytes(ephemeral)
    enc = sk_e.public_key().public_bytes(*raw)
    dh = sk_e.exchange(sk_r.public_key())
    kem = b"KEM" + be16(0x20)
    prk = labeled_extract(kem, b"", b"eae_prk", dh)
    shared = labeled_expand(kem, prk, b"shared_secret", enc + pk_r, 32)
    suite = b"HPKE" + be16(0x20) + be16(1) + be16(3)
    ctx = b"\0" + labeled_extract(suite, b"", b"psk_id_hash", b"") + labeled_extract(suite, b"", b"info_hash", b"")
    secret_ = labeled_extract(suite, shared, b"secret", b"")
    key = labeled_expand(suite, secret_, b"key", ctx, 32)
    base_nonce = labeled_expand(suite, secret_, b"base_nonce", ctx, 12)
    aead = ChaCha20Poly1305(key)
    sealed = []
    for seq, p in enumerate(blocks):
        nonce = bytes(a ^ b for a, b in zip(base_nonce, seq.to_bytes(12, "big")))
        sealed.append(aead.encrypt(nonce, p, b""))
    return enc, sealed


def record(source, code, elapsed_us, data):
    return be32(13 + len(data)) + bytes([source]) + be32(code) + struct.pack(">Q", elapsed_us) + data


def header(enc_hex, pty):
    h = {
        "started_at": 1700000000,
        "data_size": 0,
        "encapsulated_key": enc_hex,
        "pty": {"term": "xterm", "width": 80, "height": 24, "modes": [["ECHO", 1]]} if pty else None,
        "exit_data": {"timestamp": 1700000009, "status": 0, "signal": None, "core_dumped": False, "error_msg": None},
        "request": "shell",
    }
    js = json.dumps(h, separators=(",", ":")).encode().ljust(3072, b" ")
    import base64
    b64 = base64.b64encode(js)
    return be32(len(b64)) + b64


def recording_seeds():
    blocks = [
        record(0, 94, 1000, b"ls -l\r") + record(1, 94, 2000, b"total 0\r\n"),
        record(1, 95, 3000, b"err: nothing\n"),
    ]
    try:
        enc, sealed = seal_blocks(bytes([0x42] * 32), bytes([0x17] * 32), blocks)
    except ImportError:
        print("python3-cryptography missing: recording log seed not written")
        return
    log = header(enc.hex(), True)
    for ct in sealed:
        log += be32(len(ct)) + ct
    out("recording", "mode0-log", b"\0" + log)
    # Mode 1: a header and plaintext records.
    out("recording", "mode1-records", b"\1" + header(enc.hex(), False) + b"".join(blocks))

    # Mode 2: flags, tamper position, block count, blocks (u16 length + plaintext).
    def structured(flags, at, plain):
        return b"\2" + bytes([flags]) + be16(at) + bytes([len(plain)]) + b"".join(be16(len(p)) + p for p in plain)

    out("recording", "mode2-clean", structured(0x03, 0, blocks))
    out("recording", "mode2-cut", structured(0x04 | 0x01, 700, blocks))
    out("recording", "mode2-flip", structured(0x08 | 0x40, 30, blocks))
    out("recording", "mode2-empty-block", structured(0x00, 0, [blocks[0], b"", blocks[1]]))
    out("recording", "mode2-wrapped", structured(0x10 | 0x0c, 0, [b"\x01hello", b"\x00world"]) + b"trailing")


# ---------------------------------------------------------------------------------------
# sftp: client → target request streams (first byte: how the fuzzer cuts them).

def sftp_string(s):
    return be32(len(s)) + s


def sftp_packet(kind, rid, *fields):
    body = bytes([kind]) + be32(rid) + b"".join(fields)
    return be32(len(body)) + body


def sftp_seeds():
    init = be32(5) + bytes([1]) + be32(3)
    s = init
    s += sftp_packet(3, 1, sftp_string(b"/etc/passwd"), be32(1), be32(0))
    s += sftp_packet(6, 2, sftp_string(b"handle"), struct.pack(">Q", 0), sftp_string(b"x" * 200))
    s += sftp_packet(3, 3, sftp_string(b"/tmp/new"), be32(0x1a), be32(0))
    s += sftp_packet(18, 4, sftp_string(b"/tmp/a"), sftp_string(b"/tmp/b"))
    s += sftp_packet(13, 5, sftp_string(b"/tmp/b"))
    out("sftp", "session", b"\x07" + s)
    s = init
    s += sftp_packet(14, 1, sftp_string(b"/tmp/d"), be32(0))
    s += sftp_packet(15, 2, sftp_string(b"/tmp/d"))
    s += sftp_packet(20, 3, sftp_string(b"/tmp/l"), sftp_string(b"/etc/shadow"))
    s += sftp_packet(9, 4, sftp_string(b"/tmp/f"), be32(4), be32(0o644))
    s += sftp_packet(11, 5, sftp_string(b"/home"))
    s += sftp_packet(200, 6, sftp_string(b"posix-rename@openssh.com"), sftp_string(b"/a"), sftp_string(b"/b"))
    s += sftp_packet(200, 7, sftp_string(b"hardlink@openssh.com"), sftp_string(b"/c"), sftp_string(b"/d"))
    s += sftp_packet(200, 8, sftp_string(b"statvfs@openssh.com"), sftp_string(b"/"))
    out("sftp", "operations", b"\x1d" + s)
    # Names with control characters and invalid UTF-8; a packet padded past what is parsed.
    s = sftp_packet(13, 1, sftp_string(b"/tmp/\x1b[31mred\xff"))
    s += sftp_packet(13, 2, sftp_string(b"/tmp/padded"), b"\0" * 300)
    out("sftp", "odd-names", b"\x01" + s)


# ---------------------------------------------------------------------------------------
# target_keys: the daemon's file of target host keys.

def target_keys_seeds():
    out("target_keys", "file", b"1 198.18.10.10:22 SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\n"
        b"2 [2001:db8::10]:2222 SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s\n"
        b"1 198.18.10.10:22 SHA256:AAAAQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\n")
    out("target_keys", "cut", b"1 198.18.10.10:22 SHA256:47DEQpj8HBSa\n7 [fe80::1%2]:22 SHA256:x\r\n1 198.18")
    out("target_keys", "garbage", b"# not a comment\n\n65536 1.2.3.4:5 fp\n1 1.2.3.4 fp\n1 1.2.3.4:5 fp extra\n\xff\xfe 1.2.3.4:5 x\n")


# ---------------------------------------------------------------------------------------
# classify: 72 bytes of tables (see fuzz_targets/classify.rs), then an Ethernet frame.

def tables(flags=0x01, vlan=100, stripped=0, ports=(22,), addr0=bytes([198, 18, 10, 10]) + bytes(12),
           addr1=bytes.fromhex("20010db8000000000000000000000010"), v4flags=0x01):
    c = bytes([flags]) + be16(vlan) + be16(stripped) + bytes([len(ports)])
    c += b"".join(be16(p) for p in ports).ljust(32, b"\0")
    c += addr0 + addr1 + bytes([v4flags, 0])
    assert len(c) == 72
    return c


MACS = bytes.fromhex("020000000001020000000002")


def tcp(dport, doff=5):
    return be16(40000) + be16(dport) + be32(1) + be32(0) + bytes([doff << 4, 0x02]) + be16(0xffff) + be16(0) + be16(0)


def ipv4(dst, payload, proto=6, options=b"", frag=0x4000):
    ihl = (20 + len(options)) // 4
    return bytes([0x40 | ihl, 0]) + be16(20 + len(options) + len(payload)) + be16(0x1234) + be16(frag) + \
        bytes([64, proto]) + be16(0) + bytes([198, 18, 1, 2]) + bytes(dst) + options + payload


def ipv6(dst, next_header, payload):
    return bytes([0x60, 0, 0, 0]) + be16(len(payload)) + bytes([next_header, 64]) + \
        bytes.fromhex("20010db8000100000000000000000002") + dst + payload


def ext(next_header, length_units=0):
    return bytes([next_header, length_units]) + bytes(6 + 8 * length_units)


def classify_seeds():
    t4 = bytes([198, 18, 10, 10])
    t6 = bytes.fromhex("20010db8000000000000000000000010")
    eth4, eth6 = MACS + be16(0x0800), MACS + be16(0x86dd)
    c = tables()
    out("classify", "v4-steered", c + eth4 + ipv4(t4, tcp(22)))
    out("classify", "v4-other-port", c + eth4 + ipv4(t4, tcp(80)))
    out("classify", "v4-options", c + eth4 + ipv4(t4, tcp(22), options=b"\x01\x01\x01\x00"))
    out("classify", "v4-fragment", c + eth4 + ipv4(t4, tcp(22), frag=0x2000))
    out("classify", "v4-no-target", c + eth4 + ipv4(bytes([10, 0, 0, 1]), tcp(22)))
    out("classify", "v4-udp", c + eth4 + ipv4(t4, bytes(8), proto=17))
    out("classify", "v4-truncated-tcp", c + eth4 + ipv4(t4, tcp(22))[:30])
    cv = tables(flags=0x00, vlan=100)
    out("classify", "vlan", cv + MACS + be16(0x8100) + be16(100) + be16(0x0800) + ipv4(t4, tcp(22)))
    out("classify", "qinq", cv + MACS + be16(0x88a8) + be16(5) + be16(0x8100) + be16(100) + be16(0x86dd) +
        ipv6(t6, 6, tcp(22)))
    out("classify", "inner-stag", cv + MACS + be16(0x8100) + be16(100) + be16(0x88a8) + be16(100) + be16(0x0800) +
        ipv4(t4, tcp(22)))
    out("classify", "stripped-vlan", tables(flags=0x02, stripped=42) + eth4 + ipv4(t4, tcp(22)))
    many = tables(ports=tuple(range(2200, 2212)))
    out("classify", "overflow-port", many + eth4 + ipv4(t4, tcp(2210)))
    out("classify", "v6-steered", c + eth6 + ipv6(t6, 6, tcp(22)))
    out("classify", "v6-ext-chain", c + eth6 + ipv6(t6, 0, ext(43, 1) + ext(60) + ext(51) + bytes([6, 1]) +
        bytes(10) + tcp(22)))
    out("classify", "v6-ah", c + eth6 + ipv6(t6, 51, bytes([6, 1]) + bytes(10) + tcp(22)))
    out("classify", "v6-fragment", c + eth6 + ipv6(t6, 44, bytes([6, 0, 0, 1, 0, 0, 0, 1]) + tcp(22)))
    out("classify", "v6-long-chain", c + eth6 + ipv6(t6, 60, b"".join(ext(60) for _ in range(6)) + ext(6) + tcp(22)))
    out("classify", "v6-late-hop-by-hop", c + eth6 + ipv6(t6, 60, ext(0) + ext(6) + tcp(22)))
    out("classify", "every-address", tables(flags=0x05) + eth6 + ipv6(bytes(16), 6, tcp(22)))
    out("classify", "v4-ah", c + eth4 + ipv4(t4, bytes([6, 4]) + bytes(10) + tcp(22), proto=51))
    out("classify", "arp", c + MACS + be16(0x0806) + bytes(28))


def terminal_seeds():
    # First byte: how the output is cut into chunks.
    out("terminal", "osc-csi", b"\x03a\x1b]52;c;aGk=\x07\x1b[2Jok\x1b[6n\x1b[1mbold\x1b[0m")
    out("terminal", "c1-dcs", b"\x00a\xc2\x9d0;t\xc2\x9c\xc2\x9b6n\xc2\xa9\x1bP$q m\x1b\\"
        b"\x1b[?1$p\x1b[1'|\x1bZ\x1b7\x1b8")


if __name__ == "__main__":
    # Rewrites its own files only: the seed dirs also hold regression inputs and minimized
    # corpus entries that it did not write.
    config_seeds()
    recording_seeds()
    sftp_seeds()
    target_keys_seeds()
    classify_seeds()
    terminal_seeds()
