"""Project utilities outside the Dassl core: plots of results."""
