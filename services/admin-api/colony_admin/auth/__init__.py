"""Who may call the admin API and the cluster's authentication service: tokens, roles,
passwords and SIP digest credentials, brute-force throttling."""
