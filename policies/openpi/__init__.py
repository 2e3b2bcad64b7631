"""openpi's websocket policy protocol, both ways: the wire format (msgpack_numpy), a server for hivla's
learned low levels (server) and a LowLevelPolicy that drives any openpi policy server (client)."""
