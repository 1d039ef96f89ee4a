"""The Azure backend (azure-mgmt-compute): the Backend (backend), ARM helpers and error classes
(arm), and the network setup (network).
"""
