"""What code inside a job relies on and writes to. A leaf: it imports only pisweep's errors and atomic writes."""
