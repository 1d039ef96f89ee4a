"""The control plane: configs in git -> desired state -> plan -> apply through backends."""
