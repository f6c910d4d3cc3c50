"""Backends render the planner's Plan into kernel objects and keep them in sync.

base: the contract (Backend, SyncResult); view and trace: what `kproxy dump` and
`kproxy trace` print, whichever backend filled them; nft/ and iptables/: the backends,
each with its kernel interface, a fake of it, its read-back and its trace; registry: which
backend a mode means and which one has programmed this node.
"""
