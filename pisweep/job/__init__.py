"""What code inside a job relies on and writes to. A leaf: it imports nothing else of pisweep's."""
