"""What tests, benchmarks and the demo share: tiny random checkpoints and adapters made with
transformers/peft (no downloads), and a server run as a child process."""
