"""What tests/ and bench/ share to drive a real server: the process wrapper and the load client."""
