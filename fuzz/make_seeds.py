#!/usr/bin/env python3
"""Writes the seed corpus in fuzz/corpus/<target>/ (deterministic; re-run to regenerate).

Seeds are small, valid or nearly valid inputs: real Phoenix frames, long-poll bodies, Redis
envelopes in the exact shape `envelope::encode` writes, and Phoenix/JWT tokens signed with
the keys the token targets verify with. Inputs the fuzzer finds and that are worth keeping
are added next to them (see fuzz/README.md); this script does not delete those.
"""

import base64
import hashlib
import hmac
import json
import os
import struct
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


# --- V1 JSON -------------------------------------------------------------------------------
V1 = {
    "join": '{"topic":"room:lobby","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}',
    "heartbeat": '{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"2"}',
    "push": '{"topic":"room:lobby","event":"new_msg","payload":{"body":"h\\u00e9llo \\u2603",'
    '"n":[1,-2,3.5e3,null,true]},"ref":7,"join_ref":null}',
    "leave": '{"topic":"room:lobby","event":"phx_leave","payload":{},"ref":"3","join_ref":"1"}',
    "near_missing_ref": '{"topic":"t","event":"e","payload":{}}',
    "near_object_ref": '{"topic":"t","event":"e","payload":{},"ref":{}}',
    "near_v2_array": '["1","1","room:lobby","phx_join",{}]',
}
for k, v in V1.items():
    write("decode_v1", k + ".json", v)

# --- V2 JSON -------------------------------------------------------------------------------
V2 = {
    "join": '["1","1","room:lobby","phx_join",{}]',
    "heartbeat": '[null,"2","phoenix","heartbeat",{}]',
    "push": '["1","3","room:lobby","new_msg",{"body":"hi","list":[1,2.5,"x",null,false]}]',
    "leave": '["1","4","room:lobby","phx_leave",{}]',
    "extra_elements": '[null,"5","phoenix","heartbeat",{},"extra"]',
    "numeric_refs": '[1,2,"room:1","ping",{"n":-9223372036854775808,"u":18446744073709551615}]',
    "escapes": '["1","1","room:\\u00e9\\ud83d\\ude00","e\\"v",{"k\\\\":"\\u0000"}]',
    "near_short": '["1","1","room:lobby"]',
    "near_v1_object": V1["join"],
}
for k, v in V2.items():
    write("decode_v2", k + ".json", v)


# --- V2 binary (client push: kind 0, 4 length bytes, join_ref, ref, topic, event, payload) --
def push(join_ref, ref, topic, event, payload, kind=0):
    fields = [f if isinstance(f, bytes) else f.encode() for f in (join_ref, ref, topic, event)]
    return bytes([kind] + [len(f) for f in fields]) + b"".join(fields) + payload


write("decode_binary", "push.bin", push("1", "1", "room:lobby", "new_msg", b"\xde\xad\xbe\xef"))
write("decode_binary", "push_no_refs.bin", push("", "", "phoenix", "ping", b""))
write("decode_binary", "empty_fields.bin", bytes(5))
write("decode_binary", "near_reply_kind.bin", push("1", "1", "room:lobby", "ok", b"{}", kind=1))
write("decode_binary", "near_truncated.bin", bytes([0, 5, 1, 10, 7]) + b"1")
write("decode_binary", "near_non_utf8_topic.bin", push("1", "1", b"\xff\xfe", "e", b"x"))

# --- long-poll bodies (first byte: odd = ndjson, even = one JSON frame) ---------------------
bin_frame = base64.b64encode(push("1", "2", "room:lobby", "new_msg", b"\x00\x01")).decode()
write("longpoll_body", "json_body.txt", b"\x00" + V2["join"].encode())
write("longpoll_body", "json_body_v1.txt", b"\x00" + V1["heartbeat"].encode())
write("longpoll_body", "ndjson.txt",
      "\x01" + V2["join"] + "\n" + V2["push"] + "\r\n" + bin_frame + "\n\n")
write("longpoll_body", "ndjson_v1.txt", "\x01" + V1["join"] + "\n" + V1["heartbeat"] + "\n")
write("longpoll_body", "ndjson_101_lines.txt", "\x01" + "[]\n" * 101)
write("longpoll_body", "near_ndjson_bad_base64.txt", "\x01" + V2["join"] + "\nnot base64 !!\n")
write("longpoll_body", "json_body_non_utf8.txt", b"\x00[\"1\",\xff\xfe]")

# --- Redis envelopes (the exact shape pubsub::envelope::encode writes) ----------------------
ENV = {
    "json": '{"v":1,"node":"node-a","from":42,"topic":"room:lobby","event":"new_msg",'
    '"payload":{"body":"hi","n":[1,2]},"ts":1700000000000}',
    "binary": '{"v":1,"node":"node-a","topic":"room:lobby","event":"blob",'
    '"binary":"3q2+7w==","ts":1700000000000}',
    "external_minimal": '{"v":1,"topic":"room:lobby","event":"new_msg","payload":{}}',
    "near_version_2": '{"v":2,"node":"n","topic":"t","event":"e","payload":{},"ts":1}',
    "near_both_payloads": '{"v":1,"topic":"t","event":"e","payload":{},"binary":"AA=="}',
    "near_bad_base64": '{"v":1,"topic":"t","event":"e","binary":"*AA="}',
}
for k, v in ENV.items():
    write("envelope", k + ".json", v)

# --- Phoenix.Token (secret/salt of src/auth/phoenix_token.rs's tests) ------------------------
SKB = b"abcdefghij" * 7
SALT = b"user socket"
KEY = hashlib.pbkdf2_hmac("sha256", SKB, SALT, 1000, 32)
assert KEY.hex() == "25af3cea2f85f91ac39b0f0adb4dcae82c895d091e33374ed15e1dff83d136c2"
SIGNED_AT_MS = 1_700_000_000_000


def ptoken(message, header="SFMyNTY", digest=hashlib.sha256):
    signed = header + "." + b64url(message)
    return signed + "." + b64url(hmac.new(KEY, signed.encode(), digest).digest())


# Minimal ETF encoder for the seed terms.
def etf(t):
    if t is None:
        return etf_atom("nil")
    if t is True or t is False:
        return etf_atom("true" if t else "false")
    if isinstance(t, Atom):
        return etf_atom(t.name)
    if isinstance(t, int):
        if 0 <= t < 256:
            return bytes([97, t])
        if -(2**31) <= t < 2**31:
            return b"b" + struct.pack(">i", t)
        mag = abs(t).to_bytes((abs(t).bit_length() + 7) // 8, "little")
        return bytes([110, len(mag), 1 if t < 0 else 0]) + mag
    if isinstance(t, float):
        return b"F" + struct.pack(">d", t)
    if isinstance(t, str):
        b = t.encode()
        return b"m" + struct.pack(">I", len(b)) + b
    if isinstance(t, tuple):
        return bytes([104, len(t)]) + b"".join(etf(x) for x in t)
    if isinstance(t, list):
        if not t:
            return b"j"
        return b"l" + struct.pack(">I", len(t)) + b"".join(etf(x) for x in t) + b"j"
    if isinstance(t, dict):
        return b"t" + struct.pack(">I", len(t)) + b"".join(etf(k) + etf(v) for k, v in t.items())
    raise TypeError(t)


class Atom:
    def __init__(self, name):
        self.name = name


def etf_atom(name):
    b = name.encode()
    return bytes([119, len(b)]) + b


def term(t):
    return b"\x83" + etf(t)


def compressed(t):
    body = etf(t)
    return b"\x83P" + struct.pack(">I", len(body)) + zlib.compress(body)


VECTOR_42 = "SFMyNTY.g2gDYSpuBgAAaOXPiwFiAAFRgA.x5ePTXG_GeWPvCofqyQJFuhseqnWQpkVSWmpIKaq01Y"
VECTOR_USER = ("SFMyNTY.g2gDbQAAAAd1c2VyLTQybgYAAGjlz4sBYgAADhA."
               "Me5cabQyAmAundUclEP9GR-jdbHl9lu-Jq0T__bk-Hs")
assert ptoken(term((42, SIGNED_AT_MS, 86400))) == VECTOR_42
assert ptoken(term(("user-42", SIGNED_AT_MS, 3600))) == VECTOR_USER


def pt_seed(flags, t, rest):
    return bytes([flags]) + struct.pack(">Q", t) + (rest.encode() if isinstance(rest, str) else rest)


DATA = {"user_id": 42, "name": "ana", "roles": [Atom("admin"), "x"], "score": 1.5,
        "big": -(2**40), "ok": True, "none": None, "pair": ("a", 1)}
# Raw tokens (flags bit 0 clear).
write("phoenix_token", "raw_vector_42.bin", pt_seed(0x00, 0, VECTOR_42))
write("phoenix_token", "raw_vector_user.bin", pt_seed(0x00, 0, VECTOR_USER))
write("phoenix_token", "raw_infinity.bin", pt_seed(0x04, 0, VECTOR_42))
write("phoenix_token", "raw_max_age_60s.bin", pt_seed(0x02, 60, VECTOR_42))
write("phoenix_token", "raw_expired_2025.bin", pt_seed(0x20, 1_735_689_600_000, VECTOR_42))
write("phoenix_token", "raw_map_hs512.bin",
      pt_seed(0x00, 0, ptoken(term((DATA, SIGNED_AT_MS, 3600)), "SFM1MTI", hashlib.sha512)))
write("phoenix_token", "near_raw_bad_sig.bin", pt_seed(0x00, 0, VECTOR_42[:-1] + "Z"))
write("phoenix_token", "near_raw_unknown_header.bin",
      pt_seed(0x00, 0, "SFMxMjg" + VECTOR_42[7:]))
# ETF messages that the harness signs (flags bit 0 set; bits 3-4 pick HS384/HS512).
write("phoenix_token", "signed_int.bin", pt_seed(0x01, 0, term((42, SIGNED_AT_MS, 86400))))
write("phoenix_token", "signed_map.bin", pt_seed(0x01, 0, term((DATA, SIGNED_AT_MS, 3600))))
write("phoenix_token", "signed_map_hs384.bin", pt_seed(0x09, 0, term((DATA, SIGNED_AT_MS, 3600))))
write("phoenix_token", "signed_compressed.bin",
      pt_seed(0x11, 0, compressed(({"user": "x" * 64, "ids": list(range(20))}, SIGNED_AT_MS, 3600))))
write("phoenix_token", "signed_infinity_atom.bin",
      pt_seed(0x01, 0, term(("u", SIGNED_AT_MS, Atom("infinity")))))
write("phoenix_token", "signed_float_max_age.bin", pt_seed(0x01, 0, term(("u", SIGNED_AT_MS, 3600.5))))
write("phoenix_token", "signed_legacy_pair.bin", pt_seed(0x01, 0, term(("u", SIGNED_AT_MS))))
write("phoenix_token", "signed_legacy_map.bin",
      pt_seed(0x01, 0, term({Atom("data"): "u", Atom("signed"): SIGNED_AT_MS})))
write("phoenix_token", "signed_future_leeway.bin",
      pt_seed(0x41, 0, term(("u", SIGNED_AT_MS + 3000, 3600))))

# --- JWT (HS256 secret of src/auth/jwt.rs's tests) ------------------------------------------
SECRET = b"hs256-test-secret-0123456789abcdef"
EXP = 1_750_003_600
HEADER = b'{"typ":"JWT","alg":"HS256"}'


def jwt(claims, header=HEADER):
    if not isinstance(claims, bytes):
        claims = json.dumps(claims, separators=(",", ":")).encode()
    signed = b64url(header) + "." + b64url(claims)
    return signed + "." + b64url(hmac.new(SECRET, signed.encode(), hashlib.sha256).digest())


ISS_AUD = {"sub": "user-1", "iss": "https://auth.example", "aud": "phx-gateway",
           "exp": EXP, "nbf": 1_749_990_000}
write("jwt", "raw_valid.bin", pt_seed(0x00, 0, jwt({"sub": "user-1", "exp": EXP})))
write("jwt", "raw_valid_iss_aud.bin", pt_seed(0x02, 0, jwt(ISS_AUD)))
write("jwt", "raw_expired.bin", pt_seed(0x20, 1_800_000_000, jwt({"sub": "user-1", "exp": EXP})))
write("jwt", "near_raw_bad_sig.bin", pt_seed(0x00, 0, jwt({"sub": "user-1", "exp": EXP})[:-1] + "A"))
write("jwt", "near_raw_alg_none.bin",
      pt_seed(0x00, 0, b64url(b'{"alg":"none"}') + "." + b64url(b'{"exp":1750003600}') + "."))
write("jwt", "signed_claims.bin",
      pt_seed(0x01, 0, b'{"sub":"user-1","exp":1750003600,"nbf":1749999000,"extra":{"a":[1,2.5]}}'))
write("jwt", "signed_kid_float_exp.bin",
      pt_seed(0x01, 0, b'{"alg":"HS256","typ":"JWT","kid":"k1"}\x00{"exp":1750003600.5}'))
write("jwt", "signed_aud_array.bin",
      pt_seed(0x03, 0, b'{"iss":"https://auth.example","aud":["x","phx-gateway"],"exp":1750003600}'))
write("jwt", "near_signed_alg_none.bin", pt_seed(0x01, 0, b'{"alg":"none"}\x00{"exp":1750003600}'))
write("jwt", "near_signed_no_exp.bin", pt_seed(0x01, 0, b'{"sub":"user-1"}'))

# Phoenix.PubSub.Redis frames recorded from Phoenix 1.7.21 (the tests' fixture); the
# 70,000-byte one is left out to keep the corpus small.
FRAMES = os.path.join(os.path.dirname(ROOT), "..", "tests", "fixtures",
                      "phoenix-pubsub-redis-frames.json")
with open(FRAMES) as f:
    for frame in json.load(f)["frames"]:
        data = bytes.fromhex(frame["hex"])
        if len(data) <= 4096:
            write("phoenix_frame", "recorded-%02d.bin" % int(frame["file_order"]), data)
