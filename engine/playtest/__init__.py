"""Playbook tests (`retain test`): a team proves a playbook on made-up customers and a
simulated clock before it reaches a real customer.

model.py is the format of a test file, load.py reads one (file:line:col for every problem),
stores.py gives each test a fresh store, record.py turns the network connectors into
recorders, run.py drives a test's steps through the live run path and expect.py compares what
happened with what the test wanted.
"""
