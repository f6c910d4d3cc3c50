"""`kproxy lab`: a Kubernetes cluster made of network namespaces on one Linux machine.

spec.py is the pure part (what the cluster is: nodes, pods, addresses, the objects the
agents read); netns.py, processes.py and build.py make it real; walk.py explains it with
`kproxy trace`; command.py is the CLI.
"""
