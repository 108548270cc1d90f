"""What every LLM backend shares: bounds on what a request hands an engine, chat messages and templates,
stop strings. Protobuf in, plain Python out; no engine is imported here."""
