"""The semantic cache's matching: which cached question may answer a new one."""
