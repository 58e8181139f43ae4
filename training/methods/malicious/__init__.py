"""The malicious-response problem (He & Glass, ACL 2020): trigger search, the response LM and
negative training against target lists (Algorithm 1)."""
