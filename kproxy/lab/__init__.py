"""`kproxy lab`: a Kubernetes cluster made of network namespaces on one Linux machine.

spec.py is the pure part (what the cluster is: nodes, pods, addresses, the objects the
agents read); namespaces.py and build.py make it real, with pod_server.py and request.py
running inside its namespaces; walk.py explains it with `kproxy trace`; command.py is the
`kproxy lab` subcommand.
"""
