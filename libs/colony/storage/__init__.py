"""Account data on shared storage: the seed's SharedDomains layout, foldering, fast storage,
and the event-sourced mailbox (journal, snapshots, body files) written by one owner at a time."""
