"""``make bench``: the loop's speed measured side by side with the tools users would pick instead."""
