SELECT customers.customer_id, '2011-12-10T00:00:00Z' AS occurrence, NULL AS event_ref 
FROM customers 
WHERE (SELECT count(*) AS count_1 
FROM events AS counted_events 
WHERE counted_events.customer_id = customers.customer_id AND counted_events.occurred_at <= '2011-12-10 00:00:00.000000' AND counted_events.type = 'purchase' AND counted_events.occurred_at > '2011-09-11 00:00:00.000000') >= 3.0 AND (SELECT count(*) AS count_2 
FROM events AS counted_events 
WHERE counted_events.customer_id = customers.customer_id AND counted_events.occurred_at <= '2011-12-10 00:00:00.000000' AND counted_events.type = 'purchase' AND counted_events.occurred_at > '2011-11-10 00:00:00.000000') = 0.0 AND customers.email IS NOT NULL AND (customers.created_at IS NULL OR customers.created_at <= '2011-12-10 00:00:00.000000') AND NOT (EXISTS (SELECT * 
FROM enrollments 
WHERE enrollments.playbook_id = 'churn-warning' AND enrollments.customer_id = customers.customer_id AND (enrollments.occurrence_key = '2011-12-10T00:00:00Z' OR enrollments.entered_at > '2011-09-11 00:00:00.000000' OR enrollments.left_at IS NULL)))
