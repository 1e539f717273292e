SELECT customers.customer_id, trigger_event.event_id AS occurrence, trigger_event.id AS event_ref 
FROM events AS trigger_event JOIN customers ON customers.customer_id = trigger_event.customer_id 
WHERE 1 = 1 AND trigger_event.type = 'feedback' AND trigger_event.occurred_at > '2011-12-09 00:00:00.000000' AND trigger_event.occurred_at <= '2011-12-10 00:00:00.000000' AND trigger_event.score <= 6.0 AND (customers.created_at IS NULL OR customers.created_at <= '2011-12-10 00:00:00.000000') AND NOT (EXISTS (SELECT * 
FROM enrollments 
WHERE enrollments.playbook_id = 'negative-feedback' AND enrollments.customer_id = customers.customer_id AND enrollments.occurrence_key = trigger_event.event_id))
