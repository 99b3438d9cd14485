"""VASP: input sets, makers and jobs run through custodian."""
