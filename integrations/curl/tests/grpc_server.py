#!/usr/bin/python3
# SPDX-License-Identifier: MIT

"""A gRPC server (Python grpcio, h2c) for the tests of libctx-curl.

Run with Debian's /usr/bin/python3, which has python3-grpcio.  It listens on
an ephemeral port of 127.0.0.1, prints "port N" on stdout, and then one line
per event that a test may wait for:

    started ID            the handler of call ID began
    inactive ID T CODE    call ID's context became inactive at T
                          (CLOCK_MONOTONIC, nanoseconds); CODE is "cancelled"
                          when the client reset the stream, "done" otherwise

The server stops when its stdin closes, so it never outlives the test.

The service test.Echo takes and returns raw bytes (generic handlers without
serializers, so neither protobuf nor protoc is involved):

    Echo      returns the request
    Deadline  returns the server's deadline for the call as CLOCK_MONOTONIC
              nanoseconds in decimal (time now + time_remaining()), or
              "none" when the call has no deadline
    Hang      returns the request's ID ("started"/"inactive" name it) only
              once the call's context is inactive (the client cancelled,
              the deadline passed) or after 30 s
    Status    the request is "CODE message": ends the call with that
              numeric gRPC status and message
"""

import sys
import threading
import time

import grpc
from concurrent import futures

out_lock = threading.Lock()


def say(line):
    with out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def echo(request, context):
    return request


def deadline(request, context):
    left = context.time_remaining()
    # grpcio reports a call without a deadline as one due in the far future.
    if left is None or left > 1e9:
        return b"none"
    return b"%d" % (time.monotonic_ns() + int(left * 1e9))


def hang(request, context):
    call_id = request.decode("ascii", "replace")
    ended = threading.Event()
    stamp = {}

    def on_end():
        # Runs on grpc's thread when the call terminates for any reason:
        # note the time first, before anything can delay it.
        stamp["t"] = time.monotonic_ns()
        ended.set()

    context.add_callback(on_end)
    say("started " + call_id)
    ended.wait(30)
    code = "cancelled" if not context.is_active() else "done"
    say("inactive %s %d %s" % (call_id, stamp.get("t", time.monotonic_ns()), code))
    return request


def status(request, context):
    code_text, _, message = request.decode("utf-8", "replace").partition(" ")
    code = next(c for c in grpc.StatusCode if c.value[0] == int(code_text))
    context.abort(code, message)


def main():
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Deadline": grpc.unary_unary_rpc_method_handler(deadline),
        "Hang": grpc.unary_unary_rpc_method_handler(hang),
        "Status": grpc.unary_unary_rpc_method_handler(status),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    say("port %d" % port)
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
