"""Example applications referenced by docker-compose.yml and deploy/."""
