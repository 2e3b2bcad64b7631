"""The recorded-session format: schema, crash-safe recorder, reader, replay and exporters."""
