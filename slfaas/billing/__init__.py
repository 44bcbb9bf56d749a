"""Billing: GPU-second metering and cost reports. Not built yet (issue 5); invocation
records with their durations are kept by ``slfaas.faas.registry`` meanwhile."""
