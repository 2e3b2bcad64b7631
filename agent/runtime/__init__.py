"""The runtime: the control loop (inbox -> plan -> act), its typed seams and the events it emits."""
